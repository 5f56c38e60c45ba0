package main

import (
	"encoding/json"
	"net/http"
	"testing"
)

// TestStatusReposFlag: the status page tallies repositories only under
// --status-repos (or REGPROXY_STATUS_REPOS); without it the page says the
// tally is off.
func TestStatusReposFlag(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		env  []string
		args []string
		want bool
	}{
		{"default", nil, nil, false},
		{"flag", nil, []string{"--status-repos"}, true},
		{"env", []string{"REGPROXY_STATUS_REPOS=true"}, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			d := startDaemonEnv(t, tc.env, append([]string{"--data-dir", t.TempDir()}, tc.args...)...)
			code, body, err := d.get("/status.json")
			if err != nil || code != http.StatusOK {
				t.Fatalf("GET /status.json: %d %v", code, err)
			}
			var status struct {
				Repositories struct {
					Enabled bool `json:"enabled"`
				} `json:"repositories"`
			}
			if err := json.Unmarshal(body, &status); err != nil {
				t.Fatalf("GET /status.json: %v\n%s", err, body)
			}
			if status.Repositories.Enabled != tc.want {
				t.Errorf("repositories.enabled = %v; want %v", status.Repositories.Enabled, tc.want)
			}
		})
	}
}
