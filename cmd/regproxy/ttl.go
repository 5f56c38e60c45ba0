package main

import (
	"fmt"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/regproxy/regproxy/proxy"
)

// ttlRuleEnv holds --manifest-ttl-rule values, one a line, for a serve
// given none on its command line.
const ttlRuleEnv = "REGPROXY_MANIFEST_TTL_RULE"

// ttlRuleFlag is --manifest-ttl-rule. It is a GenericFlag, not a
// StringSliceFlag, because urfave/cli splits a slice flag's values at
// commas, and a regular expression may hold one (v[0-9]{1,3}). The
// environment is read by tagTTLRules, one rule a line.
func ttlRuleFlag() cli.Flag {
	return &cli.GenericFlag{Name: "manifest-ttl-rule", Value: &ruleValues{},
		Usage: "REGEX=DURATION: tags whose name, registry/repository:tag (docker.io/library/alpine:latest), " +
			"REGEX matches are served for DURATION before revalidation instead of --manifest-ttl; " +
			"0 asks upstream with a HEAD on every request; first match wins " +
			"(repeatable; $" + ttlRuleEnv + ": one a line)"}
}

// ruleValues collects the values of --manifest-ttl-rule, as given.
type ruleValues []string

func (v *ruleValues) Set(s string) error { *v = append(*v, s); return nil }

// String is empty: the flag has no default for the help to show.
func (v *ruleValues) String() string { return "" }

// tagTTLRules reads the TTL rules of serve, first match first: those of
// --manifest-ttl-rule (or, if it is not given, REGPROXY_MANIFEST_TTL_RULE),
// then rpardini's primary and secondary tiers (see rpardiniRules). A bad
// rule is a usage error that names where it came from.
func tagTTLRules(c *cli.Context) ([]proxy.TTLRule, error) {
	values, _ := c.Generic("manifest-ttl-rule").(*ruleValues)
	source := "--manifest-ttl-rule"
	if values == nil || len(*values) == 0 {
		values = &ruleValues{}
		for line := range strings.Lines(os.Getenv(ttlRuleEnv)) {
			if line = strings.TrimSpace(line); line != "" {
				*values = append(*values, line)
			}
		}
		source = "--manifest-ttl-rule (from " + ttlRuleEnv + ")"
	}
	var rules []proxy.TTLRule
	for _, v := range *values {
		r, err := parseTTLRule(v)
		if err != nil {
			return nil, cli.Exit(fmt.Sprintf("%s: %v", source, err), 2)
		}
		rules = append(rules, r)
	}
	more, err := rpardiniRules(os.Getenv)
	if err != nil {
		return nil, cli.Exit(err.Error(), 2) // the message names the variable
	}
	return append(rules, more...), nil
}

// parseTTLRule reads REGEX=DURATION, split at the last "=": a duration has
// none, a regular expression may. REGEX is Go's (RE2) syntax, matched
// unanchored; DURATION is parseRuleTTL's. Errors quote s.
func parseTTLRule(s string) (proxy.TTLRule, error) {
	i := strings.LastIndexByte(s, '=')
	if i < 0 {
		return proxy.TTLRule{}, fmt.Errorf("%q: want REGEX=DURATION", s)
	}
	expr, dur := s[:i], s[i+1:]
	if expr == "" {
		return proxy.TTLRule{}, fmt.Errorf("%q: empty REGEX (.* matches every tag)", s)
	}
	re, err := regexp.Compile(expr)
	if err != nil {
		return proxy.TTLRule{}, fmt.Errorf("%q: %v", s, err)
	}
	ttl, err := parseRuleTTL(dur)
	if err != nil {
		return proxy.TTLRule{}, fmt.Errorf("%q: %v", s, err)
	}
	return proxy.TTLRule{Pattern: re, TTL: ttl}, nil
}

// parseRuleTTL is parseDuration, which also takes zero ("0", "0s", "0d"):
// revalidate on every request.
func parseRuleTTL(s string) (time.Duration, error) {
	if d, err := time.ParseDuration(s); (err == nil && d == 0) || s == "0d" {
		return 0, nil
	}
	d, err := parseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q: want e.g. 0, 30m, 1h or 7d", s)
	}
	return d, nil
}

// formatTTLRule writes r as parseTTLRule reads it, with its TTL in whole
// days where it is a number of them.
func formatTTLRule(r proxy.TTLRule) string {
	return r.Pattern.String() + "=" + formatTTL(r.TTL)
}

// formatTTL writes d as parseRuleTTL reads it: "0", "7d", else as
// time.Duration writes it ("1h30m0s").
func formatTTL(d time.Duration) string {
	const day = 24 * time.Hour
	switch {
	case d == 0:
		return "0"
	case d%day == 0:
		return fmt.Sprintf("%dd", d/day)
	}
	return d.String()
}

// formatTTLRules is the rules for the start-up log line.
func formatTTLRules(rules []proxy.TTLRule) []string {
	out := make([]string, len(rules))
	for i, r := range rules {
		out[i] = formatTTLRule(r)
	}
	return out
}

// rpardiniTiers are rpardini/docker-registry-proxy's manifest cache tiers,
// with the defaults of its Dockerfile. There, each REGEX is an nginx
// location, ^/v2/(.*)/manifests/REGEX: it must match at the start of the
// tag (or digest), and may end anywhere in it.
var rpardiniTiers = []struct{ regexVar, timeVar, regex, time string }{
	{"MANIFEST_CACHE_PRIMARY_REGEX", "MANIFEST_CACHE_PRIMARY_TIME", `(stable|nightly|production|test)`, "10m"},
	{"MANIFEST_CACHE_SECONDARY_REGEX", "MANIFEST_CACHE_SECONDARY_TIME", `(.*)(\d|\.)+(.*)(\d|\.)+(.*)(\d|\.)+`, "60d"},
}

// rpardiniTagStart anchors a rpardini REGEX where nginx anchors it, at the
// start of the tag: after the last "/" of registry/repository:tag, the
// last path component and its ":". (A registry's port is before a "/", a
// repository has no ":", so no other ":" follows a "/" and a last
// component.)
const rpardiniTagStart = `^.+/[^/:]+:`

// rpardiniRules returns a rule for each of rpardini's tiers whose REGEX or
// TIME variable is set, the other one taking rpardini's default as it
// does there: REGEX matched at the start of the tag only, as nginx did.
// Tiers whose variables are both unset add no rule (regproxy does not
// turn rpardini's default tiers on by itself).
func rpardiniRules(getenv func(string) string) ([]proxy.TTLRule, error) {
	var rules []proxy.TTLRule
	for _, tier := range rpardiniTiers {
		expr, dur := getenv(tier.regexVar), getenv(tier.timeVar)
		if expr == "" && dur == "" {
			continue
		}
		if expr == "" {
			expr = tier.regex
		}
		if dur == "" {
			dur = tier.time
		}
		re, err := regexp.Compile(rpardiniTagStart + "(?:" + expr + ")")
		if err != nil {
			return nil, fmt.Errorf("%s: %q: %v (Go's RE2 syntax: no lookarounds or backreferences)", tier.regexVar, expr, err)
		}
		ttl, err := parseRuleTTL(dur)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", tier.timeVar, err)
		}
		rules = append(rules, proxy.TTLRule{Pattern: re, TTL: ttl})
	}
	return rules, nil
}
