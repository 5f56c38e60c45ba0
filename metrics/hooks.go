package metrics

import (
	"crypto/x509"

	"github.com/prometheus/client_golang/prometheus"
)

// CA is what the certificate metrics read at each scrape. *ca.CA
// implements it.
type CA interface {
	// Minted is how many leaf certificates the CA has signed.
	Minted() uint64
	// Certificate is the CA certificate.
	Certificate() *x509.Certificate
}

// SetCA makes the metrics report c: leaves minted and the CA's expiry.
func (m *Metrics) SetCA(c CA) { m.ca.Store(&c) }

// CacheStats is what the cache's index knows of the cache, read at each
// scrape and by the summary log line. The eviction index provides it
// (SetCacheStats); a negative figure is unknown and not exported.
type CacheStats struct {
	// Blobs, Manifests (with their metadata records), Tags (tag records)
	// and Other count the committed entries of each kind.
	Blobs, Manifests, Tags, Other KindStats
	// MaxBytes is the size cap; zero or less means none.
	MaxBytes int64
	// FreeBytes is the space available on the cache's filesystem,
	// FilesystemBytes its size and MinFreeBytes the free space eviction
	// keeps; -1 when unknown or (MinFreeBytes) when there is no floor.
	FreeBytes, FilesystemBytes, MinFreeBytes int64
	// Evicted counts the entries and bytes evicted since the start.
	Evicted KindStats
	// Loaded is false until the index has read the whole store at start:
	// until then it counts only what was committed or read since.
	Loaded bool
}

// KindStats counts entries and their bytes.
type KindStats struct {
	Entries, Bytes int64
}

// Total is the entries and bytes of every kind.
func (s CacheStats) Total() KindStats {
	var t KindStats
	for _, k := range []KindStats{s.Blobs, s.Manifests, s.Tags, s.Other} {
		t.Entries += k.Entries
		t.Bytes += k.Bytes
	}
	return t
}

// SetCacheStats is the registration hook of the cache's eviction index:
// stats is called at each scrape (so it must be cheap and safe for
// concurrent use) for regproxy_cache_*. Before it is called, or with nil,
// those metrics are absent.
func (m *Metrics) SetCacheStats(stats func() CacheStats) {
	if stats == nil {
		m.cache.Store(nil)
		return
	}
	m.cache.Store(&stats)
}

// cacheStats returns the hook's figures, if there is a hook.
func (m *Metrics) cacheStats() (CacheStats, bool) {
	f := m.cache.Load()
	if f == nil {
		return CacheStats{}, false
	}
	return (*f)(), true
}

// Descriptions of the metrics the hooks provide.
var (
	mintedDesc = prometheus.NewDesc("regproxy_leaf_certificates_minted_total",
		"Leaf certificates the CA signed for intercepted hosts (cached leaves are reused, not counted).", nil, nil)
	caExpiryDesc = prometheus.NewDesc("regproxy_ca_expiry_timestamp_seconds",
		"When the CA certificate expires (its NotAfter), in seconds since the Unix epoch.", nil, nil)
	cacheBytesDesc = prometheus.NewDesc("regproxy_cache_bytes",
		"Bytes of committed cache entries, by kind (blob, manifest, tag, other).", []string{"kind"}, nil)
	cacheEntriesDesc = prometheus.NewDesc("regproxy_cache_entries",
		"Committed cache entries, by kind (blob, manifest, tag, other).", []string{"kind"}, nil)
	cacheMaxDesc = prometheus.NewDesc("regproxy_cache_max_bytes",
		"The cache's size cap (--cache-max-size); absent without one.", nil, nil)
	cacheFreeDesc = prometheus.NewDesc("regproxy_cache_free_bytes",
		"Space available on the cache's filesystem at the eviction index's last look.", nil, nil)
	cacheFSDesc = prometheus.NewDesc("regproxy_cache_filesystem_bytes",
		"Size of the cache's filesystem.", nil, nil)
	cacheMinFreeDesc = prometheus.NewDesc("regproxy_cache_min_free_bytes",
		"Free space eviction keeps on the cache's filesystem (--min-free-space); absent without a floor.", nil, nil)
	evictionsDesc = prometheus.NewDesc("regproxy_cache_evictions_total",
		"Cache entries evicted.", nil, nil)
	evictedBytesDesc = prometheus.NewDesc("regproxy_cache_evicted_bytes_total",
		"Bytes of cache entries evicted.", nil, nil)
	indexLoadedDesc = prometheus.NewDesc("regproxy_cache_index_loaded",
		"1 once the eviction index has read the whole store at start; until then the cache figures count only what was used since.", nil, nil)
)

// hooks collects the metrics read from the CA and the cache index at
// scrape time.
type hooks struct{ m *Metrics }

func (h hooks) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{mintedDesc, caExpiryDesc, cacheBytesDesc, cacheEntriesDesc, cacheMaxDesc,
		cacheFreeDesc, cacheFSDesc, cacheMinFreeDesc, evictionsDesc, evictedBytesDesc, indexLoadedDesc} {
		ch <- d
	}
}

func (h hooks) Collect(ch chan<- prometheus.Metric) {
	if c := h.m.ca.Load(); c != nil {
		ch <- prometheus.MustNewConstMetric(mintedDesc, prometheus.CounterValue, float64((*c).Minted()))
		if cert := (*c).Certificate(); cert != nil {
			ch <- prometheus.MustNewConstMetric(caExpiryDesc, prometheus.GaugeValue, float64(cert.NotAfter.Unix()))
		}
	}
	if s, ok := h.m.cacheStats(); ok {
		collectCache(ch, s)
	}
}

func collectCache(ch chan<- prometheus.Metric, s CacheStats) {
	gauge := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), labels...)
	}
	for i, k := range []KindStats{s.Blobs, s.Manifests, s.Tags, s.Other} {
		gauge(cacheBytesDesc, k.Bytes, Kinds[i])
		gauge(cacheEntriesDesc, k.Entries, Kinds[i])
	}
	if s.MaxBytes > 0 {
		gauge(cacheMaxDesc, s.MaxBytes)
	}
	if s.FreeBytes >= 0 {
		gauge(cacheFreeDesc, s.FreeBytes)
	}
	if s.FilesystemBytes >= 0 {
		gauge(cacheFSDesc, s.FilesystemBytes)
	}
	if s.MinFreeBytes >= 0 {
		gauge(cacheMinFreeDesc, s.MinFreeBytes)
	}
	loaded := int64(0)
	if s.Loaded {
		loaded = 1
	}
	gauge(indexLoadedDesc, loaded)
	ch <- prometheus.MustNewConstMetric(evictionsDesc, prometheus.CounterValue, float64(s.Evicted.Entries))
	ch <- prometheus.MustNewConstMetric(evictedBytesDesc, prometheus.CounterValue, float64(s.Evicted.Bytes))
}
