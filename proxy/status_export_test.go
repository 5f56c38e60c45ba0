package proxy

// What the status page tests need of the page's formatting, to check the
// text a person reads against the exact figures.
var (
	HumanBytes = humanBytes
	Percent    = percent
)
