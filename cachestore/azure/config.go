package azure

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
)

// Config says which container to use and how to reach it. Give either
// ConnectionString, or AccountName with AccountKey, Credential or neither:
// with neither, New authenticates with the Azure default credential chain
// (environment, workload identity, managed identity, Azure CLI), which is
// how AKS deployments authenticate.
type Config struct {
	// AccountName is the storage account, e.g. "devstoreaccount1" for Azurite.
	AccountName string
	// AccountKey is the account's shared key, base64-encoded as the Azure
	// portal shows it.
	AccountKey string
	// Credential, if set (and AccountKey is not), authenticates with
	// Microsoft Entra ID tokens.
	Credential azcore.TokenCredential
	// Endpoint is the blob service URL. Empty means
	// https://ACCOUNT.blob.core.windows.net/; set it for sovereign clouds or
	// Azurite (http://127.0.0.1:10000/devstoreaccount1).
	Endpoint string
	// ConnectionString replaces AccountName, AccountKey and Endpoint.
	ConnectionString string
	// Container holds the cache; New creates it if it is missing. Empty
	// means "regproxy".
	Container string
	// Proxy, if set, is the HTTP proxy that every request to Azure goes
	// through (except those to link-local addresses, where managed identity
	// tokens come from). Nil means a direct connection: the proxy is never
	// taken from the environment.
	Proxy *url.URL

	// BlockSize is the size of the blocks a writer stages while bytes
	// arrive (default 4 MiB). An entry no larger than one block is stored
	// with a single request at Commit.
	BlockSize int
	// BlocksInFlight bounds the blocks one writer holds in memory, the
	// one it fills and those it uploads (default 4); Write waits for an
	// upload to end when it needs a new block while they are all taken.
	BlocksInFlight int
}

// String describes c without its secrets (the key, and the connection
// string, which may hold a key or a SAS), so that logging a Config is safe.
func (c Config) String() string {
	auth := "default credential chain"
	switch {
	case c.ConnectionString != "":
		auth = "connection string"
	case c.AccountKey != "":
		auth = "account key"
	case c.Credential != nil:
		auth = "token credential"
	}
	return fmt.Sprintf("azure account %q endpoint %q container %q (%s)", c.AccountName, c.Endpoint, c.Container, auth)
}

// DefaultContainer is the container used when Config.Container is empty.
const DefaultContainer = "regproxy"

// Defaults of Config's sizes.
const (
	defaultBlockSize      = 4 << 20
	defaultBlocksInFlight = 4
	maxBlockSize          = 100 << 20
)

func (c *Config) setDefaults() {
	if c.Container == "" {
		c.Container = DefaultContainer
	}
	if c.BlockSize == 0 {
		c.BlockSize = defaultBlockSize
	}
	if c.BlocksInFlight == 0 {
		c.BlocksInFlight = defaultBlocksInFlight
	}
}

// containerNameRE is Azure's container name grammar: 3 to 63 lowercase
// letters, digits and hyphens, starting and ending with a letter or digit,
// with no two hyphens in a row (the last rule is checked apart).
var containerNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$`)

// ConfigError is New's error for a Config it refuses before making any
// request: a field out of its grammar, a malformed connection string, a key
// that is not base64. Field names the Config field at fault. Its message is
// one line and holds no secret.
type ConfigError struct {
	Field string // "AccountName", "AccountKey", "Endpoint", "ConnectionString", "Container", "BlockSize" or "BlocksInFlight"
	Err   error
}

func (e *ConfigError) Error() string { return "cachestore/azure: " + e.Err.Error() }
func (e *ConfigError) Unwrap() error { return e.Err }

// validate checks c after setDefaults, without any request, and reports the
// first field at fault.
func (c *Config) validate() error {
	bad := func(field string, err error) error { return &ConfigError{Field: field, Err: err} }
	if c.ConnectionString != "" {
		if c.AccountName != "" || c.AccountKey != "" || c.Endpoint != "" {
			return bad("ConnectionString", errors.New("a connection string replaces the account name, key and endpoint: give one or the other"))
		}
	} else if c.AccountName == "" {
		return bad("AccountName", errors.New("no account name (or connection string)"))
	}
	if c.Endpoint != "" {
		u, err := url.Parse(c.Endpoint)
		if err != nil || u.Scheme != "http" && u.Scheme != "https" || u.Host == "" || u.RawQuery != "" {
			return bad("Endpoint", fmt.Errorf("endpoint %q: want http(s)://HOST[:PORT][/PATH]", c.Endpoint))
		}
	}
	if !containerNameRE.MatchString(c.Container) || strings.Contains(c.Container, "--") {
		return bad("Container", fmt.Errorf("container name %q: want 3 to 63 lowercase letters, digits and single hyphens, "+
			"starting and ending with a letter or digit", c.Container))
	}
	for _, n := range []struct {
		field, name string
		v, lo, hi   int
	}{
		{"BlockSize", "block size", c.BlockSize, 1 << 10, maxBlockSize},
		{"BlocksInFlight", "blocks in flight", c.BlocksInFlight, 1, 64},
	} {
		if n.v < n.lo || n.v > n.hi {
			return bad(n.field, fmt.Errorf("%s %d: want %d to %d", n.name, n.v, n.lo, n.hi))
		}
	}
	return nil
}

// serviceURL is the blob service endpoint, with a trailing slash.
func (c *Config) serviceURL() string {
	if c.Endpoint == "" {
		return "https://" + c.AccountName + ".blob.core.windows.net/"
	}
	return strings.TrimSuffix(c.Endpoint, "/") + "/"
}

// client builds the container client for c, whose requests go through hc.
func (c *Config) client(hc *http.Client) (*container.Client, error) {
	opts := &container.ClientOptions{ClientOptions: clientOptions(hc)}
	if c.ConnectionString != "" {
		cl, err := container.NewClientFromConnectionString(c.ConnectionString, c.Container, opts)
		if err != nil {
			return nil, &ConfigError{Field: "ConnectionString", Err: fmt.Errorf("connection string: %w", err)}
		}
		return cl, nil
	}
	containerURL := c.serviceURL() + c.Container
	if c.AccountKey != "" {
		cred, err := blob.NewSharedKeyCredential(c.AccountName, c.AccountKey)
		if err != nil {
			return nil, &ConfigError{Field: "AccountKey", Err: fmt.Errorf("account key: %w", err)}
		}
		return container.NewClientWithSharedKeyCredential(containerURL, cred, opts)
	}
	cred := c.Credential
	if cred == nil {
		var err error
		cred, err = azidentity.NewDefaultAzureCredential(&azidentity.DefaultAzureCredentialOptions{
			ClientOptions: clientOptions(hc),
		})
		if err != nil {
			return nil, fmt.Errorf("no account key, and the default credential chain: %w", err)
		}
	}
	return container.NewClient(containerURL, cred, opts)
}

// clientOptions sends requests through hc and keeps retries short: a cache
// that waits a minute for Azure is worse than one that goes upstream.
func clientOptions(hc *http.Client) policy.ClientOptions {
	return policy.ClientOptions{
		Transport: hc,
		Retry: policy.RetryOptions{
			MaxRetries:    3,
			RetryDelay:    200 * time.Millisecond,
			MaxRetryDelay: 5 * time.Second,
		},
		Telemetry: policy.TelemetryOptions{ApplicationID: "regproxy"},
	}
}

// newHTTPClient returns the client of one Store, which owns its connections
// so that Close can release them.
func newHTTPClient(c Config) *http.Client {
	dialer := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	return &http.Client{Transport: &http.Transport{
		Proxy:                 proxyFunc(c.Proxy),
		DialContext:           dialer.DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          100,
		MaxIdleConnsPerHost:   64, // every reader and upload in flight holds one
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: time.Minute,
		ExpectContinueTimeout: time.Second,
	}}
}

// proxyFunc sends requests through proxy, except those to link-local
// addresses (the instance metadata service, which issues managed identity
// tokens, is at 169.254.169.254 and never behind a proxy).
func proxyFunc(proxy *url.URL) func(*http.Request) (*url.URL, error) {
	if proxy == nil {
		return nil
	}
	return func(r *http.Request) (*url.URL, error) {
		if ip := net.ParseIP(r.URL.Hostname()); ip != nil && ip.IsLinkLocalUnicast() {
			return nil, nil
		}
		return proxy, nil
	}
}

// redactURL drops the query (a SAS token, if any) and user info from u.
func redactURL(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return "(unparsable URL)"
	}
	p.RawQuery, p.User, p.Fragment = "", nil, ""
	return p.String()
}
