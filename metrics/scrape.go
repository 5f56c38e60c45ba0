package metrics

import (
	"fmt"
	"io"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// ParseSnapshot reads a Snapshot from a scrape of /metrics in the
// Prometheus text format, as another process sees the server
// (regproxy cache stats --server): the same figures the server's own
// Snapshot reads, counted since the server started, and when it started
// (process_start_time_seconds; zero if the scrape lacks it). Cache is
// nil: the caller reads the cache itself.
func ParseSnapshot(r io.Reader) (Snapshot, time.Time, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(r)
	if err != nil {
		return Snapshot{}, time.Time{}, fmt.Errorf("metrics: parse: %w", err)
	}
	var s Snapshot
	var started time.Time
	for name, f := range families {
		for _, mt := range f.GetMetric() {
			s.add(name, mt)
			if name == "process_start_time_seconds" {
				sec := mt.GetGauge().GetValue() + mt.GetUntyped().GetValue() // a gauge, or untyped without # TYPE
				if sec > 0 {
					started = time.Unix(0, int64(sec*1e9)).UTC()
				}
			}
		}
	}
	return s, started, nil
}
