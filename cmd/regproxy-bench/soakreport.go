package main

import (
	"fmt"
	"maps"
	"time"
)

// rows reports what the soak's clients saw, the faults injected and
// regproxy's own account of the requests.
func (s *soak) rows(stats []*clientStats, elapsed time.Duration, f *faults, outcomes map[string]int) []row {
	var total clientStats
	for _, st := range stats {
		for k := range st {
			total[k].merge(&st[k])
		}
	}
	var reqs, failed, cancelled int
	var bytes int64
	causes := map[string]int{}
	for k := range total {
		t := &total[k]
		reqs += t.ok + t.cancelled + t.failed()
		failed, cancelled, bytes = failed+t.failed(), cancelled+t.cancelled, bytes+t.bytes
		for c, n := range t.causes {
			causes[c] += n
		}
	}
	secs := elapsed.Seconds()
	failRate := float64(failed) / float64(max(1, reqs-cancelled))
	resumed := outcomes["resumed"]
	delete(outcomes, "resumed")
	rows := []row{
		{metric: fmt.Sprintf("f. Soak, %d clients for %v, random upstream faults: requests (and per second)",
			s.b.cfg.soakClients, s.b.cfg.soak), value: fmt.Sprintf("%d (%.0f/s)", reqs, float64(reqs)/secs)},
		{metric: "f. Soak: body bytes received and checked, per second", value: fmtMBps(float64(bytes) / secs / 1e6)},
	}
	for k := range total {
		rows = append(rows, row{metric: "f. Soak: " + opNames[k] + ": done / failed; time p50 / p99", value: total[k].summary(opKind(k))})
	}
	return append(rows,
		row{metric: "f. Soak: failed requests by cause", value: fmtCounts(causes)},
		row{metric: "f. Soak: failed, of the requests not cancelled on purpose", value: fmt.Sprintf("%.2f%%", 100*failRate),
			target: fmt.Sprintf("≤ %.0f%%", 100*soakMaxFailed), met: verdict(failRate <= soakMaxFailed)},
		row{metric: "f. Soak: wrong bytes (every body compared with the blob, whole blobs also hashed)",
			value: fmt.Sprint(s.wrong.Load()), target: "= 0", met: verdict(s.wrong.Load() == 0)},
		row{metric: "f. Soak: bodies that ended early yet looked complete", value: fmt.Sprint(s.early.Load()),
			target: "= 0", met: verdict(s.early.Load() == 0)},
		row{metric: "f. Soak: upstream faults injected", value: fmt.Sprintf(
			"cut mid-blob %d, 503 %d (bursts of %v, one per %v on average), slow %d",
			f.cuts.Load(), f.unavailable.Load(), f.burstLen, f.burstEvery, f.slowed.Load())},
		row{metric: "f. Soak: regproxy's outcomes (its access log)", value: fmtCounts(outcomes)},
		row{metric: "f. Soak: fills resumed after an upstream cut (regproxy's log)", value: fmt.Sprint(resumed)},
		row{metric: "f. Soak: fresh blobs made for misses and joins", value: fmt.Sprintf("%d (%s)", len(s.fresh), fmtMiB(s.freshBytes))},
	)
}

// resourceRows reports regproxy's memory, threads and open files at
// rest before and after the load, and their peaks in each half of it.
func resourceRows(start, end procStatus, fdsStart, fdsEnd int, samples []sample) []row {
	if len(samples) == 0 {
		return []row{{metric: "f. Soak: regproxy RSS, threads and open files", value: "no readings of /proc/PID/status"}}
	}
	var first, second sample // peaks, field by field
	var fdsPeak int
	half := samples[len(samples)-1].at / 2
	for _, s := range samples {
		h := &first
		if s.at >= half {
			h = &second
		}
		h.st.rss, h.st.threads = max(h.st.rss, s.st.rss), max(h.st.threads, s.st.threads)
		fdsPeak = max(fdsPeak, s.fds)
	}
	rssLimit := int64(soakRSSGrowth*float64(first.st.rss)) + soakRSSSlack
	mib := func(n int64) string { return fmt.Sprintf("%.1f", float64(n)/(1<<20)) }
	last := samples[len(samples)-1].st
	return []row{
		{metric: "f. Soak: regproxy RSS (VmRSS) in MiB: idle before / peak in 1st half / peak in 2nd half / idle after",
			value:  fmt.Sprintf("%s / %s / %s / %s", mib(start.rss), mib(first.st.rss), mib(second.st.rss), mib(end.rss)),
			target: fmt.Sprintf("2nd ≤ %.2f× 1st + %s", soakRSSGrowth, fmtMiB(soakRSSSlack)), met: verdict(second.st.rss <= rssLimit)},
		{metric: "f. Soak: regproxy threads: idle before / peak in 1st half / peak in 2nd half / idle after",
			value:  fmt.Sprintf("%d / %d / %d / %d", start.threads, first.st.threads, second.st.threads, end.threads),
			target: fmt.Sprintf("2nd ≤ 1st + %d", soakThreadsSlack), met: verdict(second.st.threads <= first.st.threads+soakThreadsSlack)},
		{metric: "f. Soak: regproxy open files: idle before / peak under load / idle after",
			value:  fmt.Sprintf("%d / %d / %d", fdsStart, fdsPeak, fdsEnd),
			target: fmt.Sprintf("after ≤ before + %d", soakFdsSlack), met: verdict(fdsEnd >= 0 && fdsEnd <= fdsStart+soakFdsSlack)},
		{metric: "f. Soak: regproxy peak RSS (VmHWM)", value: fmtMiB(max(last.hwm, end.hwm))},
	}
}

func (k *kindStats) failed() int {
	n := 0
	for _, c := range k.causes {
		n += c
	}
	return n
}

func (k *kindStats) merge(o *kindStats) {
	k.ok, k.cancelled, k.bytes = k.ok+o.ok, k.cancelled+o.cancelled, k.bytes+o.bytes
	k.lat = append(k.lat, o.lat...)
	if len(o.causes) > 0 && k.causes == nil {
		k.causes = map[string]int{}
	}
	for c, n := range maps.All(o.causes) {
		k.causes[c] += n
	}
}

// summary is one kind's cell: how many were done and failed, and the
// time of those done.
func (k *kindStats) summary(kind opKind) string {
	done := fmt.Sprintf("%d", k.ok)
	if kind == opCancel {
		done = fmt.Sprintf("%d hung up as planned", k.cancelled)
	}
	return fmt.Sprintf("%s / %d; %s / %s", done, k.failed(), fmtMs(percentile(k.lat, 50)), fmtMs(percentile(k.lat, 99)))
}
