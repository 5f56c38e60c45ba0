package proxy

// What the fast path's tests need: to turn it off, so that net/http's
// answers can be compared with its own, and to see that it served.

// DisableFastPath hands every intercepted connection to net/http.
func DisableFastPath(p *Proxy) { p.noFastPath = true }

// FastServed is how many requests the fast path answered.
func FastServed(p *Proxy) int64 { return p.fast.served.Load() }
