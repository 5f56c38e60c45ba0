package proxy

import "github.com/regproxy/regproxy/internal/bytesize"

// What the status page tests need of the page's formatting, to check the
// text a person reads against the exact figures.
var (
	HumanBytes = bytesize.Format
	Percent    = percent
)
