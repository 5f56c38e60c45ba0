package metrics

import (
	"cmp"
	"slices"

	dto "github.com/prometheus/client_model/go"
)

// Status is what the status page shows of the metrics: Snapshot's totals,
// the upstream failures, and the same figures by registry, all read from
// one gathering of the series /metrics serves, so that the page and a
// scrape taken at the same moment agree.
type Status struct {
	Snapshot
	// UpstreamErrors is regproxy_upstream_errors_total over every registry
	// and reason, RateLimited regproxy_upstream_rate_limited_total.
	UpstreamErrors, RateLimited float64
	// Registries are the figures of each allow-list entry that has any,
	// the most bytes served first; "other" (tunnels, regproxy's own pages)
	// is left out.
	Registries []RegistryStatus
}

// RegistryStatus is one registry's share of Status.
type RegistryStatus struct {
	Registry string
	// CacheRequests and CacheHits are as in Snapshot.
	CacheRequests, CacheHits    float64
	ServedBytes, UpstreamBytes  float64
	UpstreamErrors, RateLimited float64
}

// HitRatio is CacheHits over CacheRequests, or 0 without any.
func (r RegistryStatus) HitRatio() float64 {
	if r.CacheRequests == 0 {
		return 0
	}
	return r.CacheHits / r.CacheRequests
}

// BytesSaved is ServedBytes minus UpstreamBytes, as Snapshot's.
func (r RegistryStatus) BytesSaved() float64 { return r.ServedBytes - r.UpstreamBytes }

// Status reads the metrics now.
func (m *Metrics) Status() (Status, error) {
	families, err := m.reg.Gather()
	if err != nil {
		return Status{}, err
	}
	var s Status
	regs := map[string]*RegistryStatus{}
	for _, f := range families {
		for _, mt := range f.GetMetric() {
			s.Snapshot.add(f.GetName(), mt)
			s.add(f.GetName(), mt, regs)
		}
	}
	if c, ok := m.cacheStats(); ok {
		s.Cache = &c
	}
	for _, r := range regs {
		s.Registries = append(s.Registries, *r)
	}
	slices.SortFunc(s.Registries, func(a, b RegistryStatus) int {
		return cmp.Or(cmp.Compare(b.ServedBytes, a.ServedBytes), cmp.Compare(a.Registry, b.Registry))
	})
	return s, nil
}

// add counts mt, a series of the family name, into the totals that
// Snapshot lacks and into its registry's figures.
func (s *Status) add(name string, mt *dto.Metric, regs map[string]*RegistryStatus) {
	reg := func() *RegistryStatus {
		name := label(mt, "registry")
		if name == Other || name == "" {
			return &RegistryStatus{} // counted in the totals only
		}
		if regs[name] == nil {
			regs[name] = &RegistryStatus{Registry: name}
		}
		return regs[name]
	}
	switch name {
	case "regproxy_requests_total":
		if outcome := label(mt, "outcome"); slices.Contains(CacheOutcomes, outcome) {
			r, v := reg(), mt.GetCounter().GetValue()
			r.CacheRequests += v
			if outcome != "miss" {
				r.CacheHits += v
			}
		}
	case "regproxy_served_bytes_total":
		reg().ServedBytes += mt.GetCounter().GetValue()
	case "regproxy_upstream_bytes_total":
		reg().UpstreamBytes += mt.GetCounter().GetValue()
	case "regproxy_upstream_errors_total":
		v := mt.GetCounter().GetValue()
		s.UpstreamErrors += v
		reg().UpstreamErrors += v
	case "regproxy_upstream_rate_limited_total":
		v := mt.GetCounter().GetValue()
		s.RateLimited += v
		reg().RateLimited += v
	}
}
