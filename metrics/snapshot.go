package metrics

import (
	"slices"

	dto "github.com/prometheus/client_model/go"
)

// Snapshot is the figures of the summary log line, read from the same
// series /metrics serves.
type Snapshot struct {
	Requests float64 // every request, tunnels and regproxy's own pages included
	// CacheRequests are requests with an outcome in CacheOutcomes, and
	// CacheHits those of them not fetched upstream for themselves.
	CacheRequests, CacheHits float64
	ServedBytes              float64 // regproxy_served_bytes_total
	UpstreamBytes            float64 // regproxy_upstream_bytes_total
	FillsInFlight            float64
	// Cache is the eviction index's figures; nil without SetCacheStats.
	Cache *CacheStats
}

// Snapshot reads the metrics now.
func (m *Metrics) Snapshot() (Snapshot, error) {
	families, err := m.reg.Gather()
	if err != nil {
		return Snapshot{}, err
	}
	var s Snapshot
	for _, f := range families {
		for _, mt := range f.GetMetric() {
			s.add(f.GetName(), mt)
		}
	}
	if c, ok := m.cacheStats(); ok {
		s.Cache = &c
	}
	return s, nil
}

func (s *Snapshot) add(name string, mt *dto.Metric) {
	switch name {
	case "regproxy_requests_total":
		v := mt.GetCounter().GetValue()
		s.Requests += v
		outcome := label(mt, "outcome")
		if slices.Contains(CacheOutcomes, outcome) {
			s.CacheRequests += v
			if outcome != "miss" {
				s.CacheHits += v
			}
		}
	case "regproxy_served_bytes_total":
		s.ServedBytes += mt.GetCounter().GetValue()
	case "regproxy_upstream_bytes_total":
		s.UpstreamBytes += mt.GetCounter().GetValue()
	case "regproxy_fills_in_flight":
		s.FillsInFlight = mt.GetGauge().GetValue()
	}
}

func label(mt *dto.Metric, name string) string {
	for _, l := range mt.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// Since returns the counters' increase from earlier to s; the gauges and
// the cache figures stay s's.
func (s Snapshot) Since(earlier Snapshot) Snapshot {
	s.Requests -= earlier.Requests
	s.CacheRequests -= earlier.CacheRequests
	s.CacheHits -= earlier.CacheHits
	s.ServedBytes -= earlier.ServedBytes
	s.UpstreamBytes -= earlier.UpstreamBytes
	return s
}

// HitRatio is CacheHits over CacheRequests, or 0 without any.
func (s Snapshot) HitRatio() float64 {
	if s.CacheRequests == 0 {
		return 0
	}
	return s.CacheHits / s.CacheRequests
}

// BytesSaved is what clients got that was not fetched upstream:
// ServedBytes minus UpstreamBytes.
func (s Snapshot) BytesSaved() float64 { return s.ServedBytes - s.UpstreamBytes }
