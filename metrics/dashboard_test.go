package metrics_test

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"

	"github.com/regproxy/regproxy/metrics"
)

const dashboardFile = "../examples/grafana/regproxy-dashboard.json"

// metricName is a regproxy metric name inside a PromQL expression.
var metricName = regexp.MustCompile(`regproxy_[a-z_]+`)

// expressions returns every PromQL string of a Grafana dashboard: panel
// targets ("expr") and template variable queries ("query", "definition"),
// wherever they nest.
func expressions(v any, key string, out *[]string) {
	switch v := v.(type) {
	case map[string]any:
		for k, child := range v {
			expressions(child, k, out)
		}
	case []any:
		for _, child := range v {
			expressions(child, key, out)
		}
	case string:
		if key == "expr" || key == "query" || key == "definition" {
			*out = append(*out, v)
		}
	}
}

// exported returns the name and type of every metric family m gathers
// once each hook has been fed.
func exported(t *testing.T) map[string]dto.MetricType {
	t.Helper()
	m := metrics.New()
	exercise(t, m)
	families, err := m.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]dto.MetricType{}
	for _, f := range families {
		names[f.GetName()] = f.GetType()
	}
	return names
}

// exists reports whether name is an exported metric, or a series of an
// exported histogram (_bucket, _sum, _count).
func exists(name string, names map[string]dto.MetricType) bool {
	if _, ok := names[name]; ok {
		return true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suffix); ok && names[base] == dto.MetricType_HISTOGRAM {
			return true
		}
	}
	return false
}

// TestDashboardNamesExistingMetrics loads the example Grafana dashboard
// and checks that every expression in it names only metrics regproxy
// exports, and that it has the panels the README promises.
func TestDashboardNamesExistingMetrics(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var dash map[string]any
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	var exprs []string
	expressions(dash, "", &exprs)
	names := exported(t)
	used := map[string]bool{}
	for _, e := range exprs {
		for _, name := range metricName.FindAllString(e, -1) {
			used[name] = true
			if !exists(name, names) {
				t.Errorf("the dashboard names %s, which regproxy does not export, in:\n  %s", name, e)
			}
		}
	}
	if len(used) < 10 {
		t.Errorf("the dashboard's %d expressions name only %d regproxy metrics; did the expressions move?", len(exprs), len(used))
	}
	var titles []string
	for _, p := range dash["panels"].([]any) {
		titles = append(titles, strings.ToLower(p.(map[string]any)["title"].(string)))
	}
	for _, want := range []string{"hit ratio", "bytes saved", "upstream 429s", "fills in flight", "cache size against the cap"} {
		if !slices.ContainsFunc(titles, func(title string) bool { return strings.Contains(title, want) }) {
			t.Errorf("no panel titled %q among %q", want, titles)
		}
	}
}

// TestDashboardCheckCatchesTypos checks the check itself: a misspelt
// name, and a suffix on a metric that is no histogram, do not pass.
func TestDashboardCheckCatchesTypos(t *testing.T) {
	t.Parallel()
	names := exported(t)
	for _, name := range []string{"regproxy_request_total", "regproxy_fills_in_flight_count", "regproxy_cache_size_bytes"} {
		if exists(name, names) {
			t.Errorf("%s passes the check; want it refused", name)
		}
	}
	for _, name := range []string{"regproxy_requests_total", "regproxy_fill_duration_seconds_bucket", "regproxy_upstream_request_duration_seconds_count"} {
		if !exists(name, names) {
			t.Errorf("%s fails the check; want it to pass", name)
		}
	}
}
