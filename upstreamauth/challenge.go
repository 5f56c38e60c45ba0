package upstreamauth

import "strings"

// challenge is one WWW-Authenticate challenge.
type challenge struct {
	scheme string            // lowercase: "bearer", "basic", …
	params map[string]string // auth-params, names lowercase
}

// pickChallenge chooses the challenge to answer: Bearer with a realm
// first, else Basic.
func pickChallenge(chs []challenge) (challenge, bool) {
	for _, ch := range chs {
		if ch.scheme == "bearer" && ch.params["realm"] != "" {
			return ch, true
		}
	}
	for _, ch := range chs {
		if ch.scheme == "basic" {
			return ch, true
		}
	}
	return challenge{}, false
}

// parseChallenges parses WWW-Authenticate field values (RFC 9110, section
// 11.6.1): comma-separated challenges, each a scheme followed by
// comma-separated name=value or name="quoted value" parameters. A token that
// is not followed by '=' starts the next challenge. Unquoted values are
// taken up to the next comma or space, so a bare URL realm survives.
func parseChallenges(values []string) []challenge {
	var out []challenge
	for _, s := range values {
		for {
			s = strings.TrimLeft(s, " \t,")
			name, rest := cutToken(s)
			if name == "" {
				break // end, or bytes we cannot read: keep what we have
			}
			rest = strings.TrimLeft(rest, " \t")
			if !strings.HasPrefix(rest, "=") {
				out = append(out, challenge{scheme: strings.ToLower(name), params: map[string]string{}})
				s = rest
				continue
			}
			var value string
			value, s = cutValue(strings.TrimLeft(rest[1:], " \t"))
			if len(out) > 0 {
				out[len(out)-1].params[strings.ToLower(name)] = value
			}
		}
	}
	return out
}

// cutToken splits s after its leading RFC 9110 token.
func cutToken(s string) (token, rest string) {
	i := strings.IndexFunc(s, func(r rune) bool { return !isTchar(r) })
	if i < 0 {
		return s, ""
	}
	return s[:i], s[i:]
}

// cutValue splits s after its leading parameter value, unquoting a
// quoted-string.
func cutValue(s string) (value, rest string) {
	if !strings.HasPrefix(s, `"`) {
		i := strings.IndexAny(s, ", \t")
		if i < 0 {
			return s, ""
		}
		return s[:i], s[i:]
	}
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"':
			return b.String(), s[i+1:]
		case c == '\\' && i+1 < len(s):
			i++
			b.WriteByte(s[i])
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), "" // unterminated: take what there is
}

func isTchar(r rune) bool {
	switch {
	case 'a' <= r && r <= 'z', 'A' <= r && r <= 'Z', '0' <= r && r <= '9':
		return true
	}
	return strings.ContainsRune("!#$%&'*+-.^_`|~", r)
}
