package azure

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/sas"
	"github.com/opencontainers/go-digest"

	"github.com/regproxy/regproxy/cachestore"
)

// wantOneLine fails unless err is an error whose message is one line
// holding every one of wants, and no secret.
func wantOneLine(t *testing.T, err error, wants ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("error = nil, want one holding %q", wants)
	}
	msg := err.Error()
	if strings.Contains(msg, "\n") {
		t.Errorf("error spans lines:\n%s", msg)
	}
	for _, want := range wants {
		if !strings.Contains(msg, want) {
			t.Errorf("error = %q, want it to hold %q", msg, want)
		}
	}
	for _, secret := range []string{devKey, "sig="} {
		if strings.Contains(msg, secret) {
			t.Errorf("error = %q, which holds a secret", msg)
		}
	}
}

func TestNewInvalidConfig(t *testing.T) {
	t.Parallel()
	ok := Config{AccountName: "acct", AccountKey: devKey, Endpoint: "http://127.0.0.1:1/acct"}
	tests := []struct {
		name  string
		edit  func(c *Config)
		want  string
		field string // of the *ConfigError
	}{
		{"no account", func(c *Config) { c.AccountName = "" }, "no account name", "AccountName"},
		{"connection string and account", func(c *Config) { c.ConnectionString = "AccountName=x" }, "connection string replaces", "ConnectionString"},
		{"connection string malformed", func(c *Config) { *c = Config{ConnectionString: "nonsense"} }, "connection string", "ConnectionString"},
		{"endpoint scheme", func(c *Config) { c.Endpoint = "ftp://h/acct" }, "endpoint", "Endpoint"},
		{"endpoint without host", func(c *Config) { c.Endpoint = "http:///acct" }, "endpoint", "Endpoint"},
		{"endpoint with a query", func(c *Config) { c.Endpoint = "http://h/acct?sv=1" }, "endpoint", "Endpoint"},
		{"container upper case", func(c *Config) { c.Container = "Cache" }, "container name", "Container"},
		{"container too short", func(c *Config) { c.Container = "ab" }, "container name", "Container"},
		{"container double hyphen", func(c *Config) { c.Container = "a--b" }, "container name", "Container"},
		{"container leading hyphen", func(c *Config) { c.Container = "-abc" }, "container name", "Container"},
		{"block size", func(c *Config) { c.BlockSize = 10 }, "block size", "BlockSize"},
		{"blocks in flight", func(c *Config) { c.BlocksInFlight = 1000 }, "blocks in flight", "BlocksInFlight"},
		{"key not base64", func(c *Config) { c.AccountKey = "not base64!" }, "account key", "AccountKey"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := ok
			tt.edit(&cfg)
			s, err := New(t.Context(), cfg)
			if s != nil {
				s.Close()
			}
			wantOneLine(t, err, "cachestore/azure: ", tt.want)
			if ce, ok := errors.AsType[*ConfigError](err); !ok || ce.Field != tt.field {
				t.Errorf("error %v: want a *ConfigError for field %s", err, tt.field)
			}
		})
	}
}

func TestNewWrongKey(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	cfg.AccountKey = base64.StdEncoding.EncodeToString(bytes.Repeat([]byte("k"), 64))
	_, err := New(t.Context(), cfg)
	wantOneLine(t, err, "authentication failed", cfg.Endpoint)
	t.Log(err)
	if !isAuthErr(err) {
		t.Errorf("isAuthErr(%v) = false, want true", err)
	}
}

func TestNewUnreachable(t *testing.T) {
	t.Parallel()
	port, err := freePort() // nothing listens there now
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{AccountName: devAccount, AccountKey: devKey,
		Endpoint: "http://127.0.0.1:" + itoa(port) + "/" + devAccount}
	start := time.Now()
	_, err = New(t.Context(), cfg)
	wantOneLine(t, err, "endpoint unreachable", "connection refused")
	t.Log(err)
	if !errors.Is(err, errUnreachable) {
		t.Errorf("error %v does not wrap errUnreachable", err)
	}
	// Three retries after 0.2, 0.4 and 0.8 s (with jitter) and no more.
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("New took %v to report a refused connection, want under 5s", d)
	}
}

// TestNewSilentEndpoint points New at a server that accepts connections and
// never answers: ctx bounds the check.
func TestNewSilentEndpoint(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan net.Conn, 16)
	go func() {
		defer close(accepted)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	t.Cleanup(func() {
		l.Close()
		for c := range accepted {
			c.Close()
		}
	})
	cfg := Config{AccountName: devAccount, AccountKey: devKey, Endpoint: "http://" + l.Addr().String() + "/" + devAccount}
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	start := time.Now()
	_, err = New(ctx, cfg)
	wantOneLine(t, err, "endpoint unreachable")
	t.Log(err)
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("New took %v with a 1s context, want it to stop at the deadline", d)
	}
}

func TestNewCreatesContainer(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	a := newStore(t, cfg) // creates it
	data := []byte("kept")
	put(t, a, cachestore.TagKey("ab"), data)
	b := newStore(t, cfg) // finds it
	wantData(t, b, cachestore.TagKey("ab"), data)
}

// TestNewCannotCreateContainer uses a SAS that may read but not create
// containers, given as a connection string.
func TestNewCannotCreateContainer(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	cred, err := blob.NewSharedKeyCredential(devAccount, devKey)
	if err != nil {
		t.Fatal(err)
	}
	qp, err := sas.AccountSignatureValues{
		Protocol:      sas.ProtocolHTTPSandHTTP,
		ExpiryTime:    time.Now().Add(time.Hour).UTC(),
		Permissions:   (&sas.AccountPermissions{Read: true, List: true}).String(),
		ResourceTypes: (&sas.AccountResourceTypes{Service: true, Container: true, Object: true}).String(),
	}.SignWithSharedKey(cred)
	if err != nil {
		t.Fatal(err)
	}
	cs := "BlobEndpoint=" + cfg.Endpoint + ";SharedAccessSignature=" + qp.Encode()
	_, err = New(t.Context(), Config{ConnectionString: cs, Container: cfg.Container})
	wantOneLine(t, err, "container "+cfg.Endpoint+"/"+cfg.Container+" is missing and cannot be created", "HTTP 403")
	t.Log(err)
}

func TestConnectionString(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	cs := "DefaultEndpointsProtocol=http;AccountName=" + devAccount + ";AccountKey=" + devKey +
		";BlobEndpoint=" + cfg.Endpoint + ";"
	s := newStore(t, Config{ConnectionString: cs, Container: cfg.Container})
	data := bytes.Repeat([]byte("connection string "), 1000)
	key := cachestore.BlobKey(digest.FromBytes(data))
	put(t, s, key, data)
	// The same container seen through the account name and key.
	wantData(t, newStore(t, cfg), key, data)
}

// TestConfigStringHidesSecrets formats configurations as a log line would.
func TestConfigStringHidesSecrets(t *testing.T) {
	t.Parallel()
	cs := "AccountName=a;AccountKey=" + devKey + ";BlobEndpoint=http://h/a;SharedAccessSignature=sig=abc"
	for _, cfg := range []Config{
		{AccountName: devAccount, AccountKey: devKey, Container: "c1"},
		{ConnectionString: cs},
	} {
		for _, got := range []string{fmt.Sprint(cfg), fmt.Sprintf("%+v", cfg), fmt.Sprintf("%v", &cfg)} {
			if strings.Contains(got, devKey) || strings.Contains(got, "sig=") {
				t.Errorf("formatted Config = %q, which holds a secret", got)
			}
		}
	}
}

// TestShortOneLine checks that an error of many lines, as azidentity's
// chain returns, prints on one, without the dashes that frame responses.
func TestShortOneLine(t *testing.T) {
	t.Parallel()
	inner := errors.New("DefaultAzureCredential: failed.\nManagedIdentityCredential: GET http://169.254.169.254/\n" +
		"--------------------------------------------------------------------------------\nRESPONSE 403\n")
	err := short(inner)
	if got, want := err.Error(), "DefaultAzureCredential: failed. ManagedIdentityCredential: GET http://169.254.169.254/ RESPONSE 403"; got != want {
		t.Errorf("short(…).Error() = %q, want %q", got, want)
	}
	if !errors.Is(err, inner) {
		t.Error("short(err) does not wrap err")
	}
}
