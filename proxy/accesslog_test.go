package proxy_test

import (
	"bytes"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/regproxy/regproxy/internal/testupstream"
)

// logField is how the text log shows a field: key=value, or key="".
func logField(key, value string) string {
	if value == "" {
		return key + `=""`
	}
	return key + "=" + value
}

// TestAccessLogNamesWhatPassedThrough: requests that are passed through
// say what kind of request they were and which repository they named, so
// that a ping, a catalog page, a tag list, an upload, a push and a delete
// are told apart; request bodies are counted in bytes_in.
func TestAccessLogNamesWhatPassedThrough(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	log := &syncBuffer{}
	e.logTo = log
	e.restart()
	img := e.up.RandomImage(t, 1, 1000)
	e.up.Push(t, "team/app", "v1", img)
	d, _ := img.Digest()
	manifest, _ := img.RawManifest()
	c := e.client()
	for _, tc := range []struct {
		method, path, contentType string
		body                      []byte
		kind, repo, ref           string
	}{
		{"GET", "/v2/", "", nil, "ping", "", ""},
		{"GET", "/v2/_catalog?n=10", "", nil, "catalog", "", ""},
		{"GET", "/v2/team/app/tags/list", "", nil, "tags", "team/app", ""},
		{"POST", "/v2/team/app/blobs/uploads/", "", nil, "upload", "team/app", ""},
		{"PATCH", "/v2/team/app/blobs/uploads/some-upload-id", "application/octet-stream", []byte("0123456789"), "upload", "team/app", ""},
		{"PUT", "/v2/team/app/manifests/v2", "application/vnd.oci.image.manifest.v1+json", manifest, "manifest", "team/app", "v2"},
		{"GET", "/v2/team/app/manifests/v1", "", nil, "manifest", "team/app", "v1"},
		{"DELETE", "/v2/team/app/manifests/" + d.String(), "", nil, "manifest", "team/app", d.String()},
		{"DELETE", "/v2/team/app/blobs/sha256:" + strings.Repeat("ab", 32), "", nil, "blob", "team/app", "sha256:" + strings.Repeat("ab", 32)},
		{"GET", "/v2/team/app/referrers/" + d.String(), "", nil, "referrers", "team/app", d.String()},
		{"GET", "/token?service=registry.test&scope=repository:team/app:pull", "", nil, "token", "", ""},
		{"POST", "/token", "application/x-www-form-urlencoded", []byte("grant_type=password"), "token", "", ""},
		{"GET", "/somewhere/else", "", nil, "other", "", ""},
		{"GET", "/v2/Team/App/tags/list", "", nil, "tags", "", ""}, // not a valid name: not logged
	} {
		req, err := http.NewRequest(tc.method, "https://"+e.up.Host+tc.path, bytes.NewReader(tc.body))
		if err != nil {
			t.Fatal(err)
		}
		if tc.contentType != "" {
			req.Header.Set("Content-Type", tc.contentType)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", tc.method, tc.path, err)
		}
		resp.Body.Close()
		want := "method=" + tc.method + " host=" + e.up.Host + " " + logField("kind", tc.kind) + " " +
			logField("repo", tc.repo) + " " + logField("ref", tc.ref) + " "
		line := waitLogLine(t, log, regexp.MustCompile(regexp.QuoteMeta(want)))
		if in := " bytes_in=" + strconv.Itoa(len(tc.body)) + " "; !strings.Contains(line, in) {
			t.Errorf("%s %s: line %q lacks%s", tc.method, tc.path, line, in)
		}
	}
	if strings.Contains(log.String(), "some-upload-id") || strings.Contains(log.String(), "scope=") {
		t.Errorf("the log shows an upload id or a query string:\n%s", log)
	}
}

// TestLocalPingLoggedOffline: when upstream is unreachable or answers the
// /v2/ ping with 5xx or 429, regproxy answers the ping itself, and the
// access log says so with OFFLINE, not STALE, which is an expired manifest
// served.
func TestLocalPingLoggedOffline(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		down func(e *env)
	}{
		{"503", func(e *env) { e.up.SetFault(testupstream.FailWith(http.StatusServiceUnavailable, "GET ping")) }},
		{"429", func(e *env) { e.up.SetFault(testupstream.FailWith(http.StatusTooManyRequests, "GET ping")) }},
		{"unreachable", func(e *env) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				e.t.Fatal(err)
			}
			dead := ln.Addr().String()
			ln.Close()
			e.stop()
			e.start(e.up.Host, dead)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			log := &syncBuffer{}
			e.logTo = log
			e.restart()
			tc.down(e)
			resp, _ := e.get(e.client(), "GET", "/v2/")
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("GET /v2/ with upstream down: %d; want 200 from regproxy", resp.StatusCode)
			}
			waitLogLine(t, log, regexp.MustCompile(`method=GET host=`+regexp.QuoteMeta(e.up.Host)+` kind=ping .*outcome=OFFLINE status=200 `))
			if strings.Contains(log.String(), "outcome=STALE") {
				t.Errorf("the local ping was logged STALE:\n%s", log)
			}
		})
	}
}

// TestProbesLoggedAtDebug: health checks and scrapes, which come every few
// seconds, are logged at debug level; the CA download stays at info.
func TestProbesLoggedAtDebug(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	log := &syncBuffer{}
	e.logTo = log
	e.restart()
	for _, path := range []string{"/healthz", "/metrics", "/ca.crt"} {
		resp, err := http.Get(e.proxyURL.String() + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %d", path, resp.StatusCode)
		}
	}
	// Each line is written before its connection reads the next request,
	// so they come in order; wait for all three.
	localLine := regexp.MustCompile(`level=(\w+) msg=request [^\n]*outcome=LOCAL`)
	var levels []string
	for deadline := time.Now().Add(ioTimeout); len(levels) < 3 && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		levels = levels[:0]
		for _, m := range localLine.FindAllStringSubmatch(log.String(), -1) {
			levels = append(levels, m[1])
		}
	}
	if got, want := strings.Join(levels, " "), "DEBUG DEBUG INFO"; got != want {
		t.Errorf("levels of the /healthz, /metrics and /ca.crt lines: %s; want %s\n%s", got, want, log)
	}
}
