package upstreamauth

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
)

// The parsers below never put a password (or the raw value holding one) in
// an error: errors end up in logs and on terminals.

// ParseFlag parses one --auth-registry value "HOST=USER:PASSWORD". The host
// ends at the first '=' and the user at the first ':' after it, so the
// password may contain both ':' and '='. An empty user or password is an
// error (the usual cause is an unset shell variable). A value that starts
// with '@' names a file of such values: see LoadFlagFile.
func ParseFlag(s string) (host string, c Credentials, err error) {
	host, c, err = parseEntry(s)
	if err != nil {
		return "", Credentials{}, fmt.Errorf("--auth-registry: %w", err)
	}
	return host, c, nil
}

// ParseFlagValue parses one --auth-registry value: "HOST=USER:PASSWORD"
// (see ParseFlag), or "@FILE" for a file of them (see LoadFlagFile).
func ParseFlagValue(v string) (Keyring, error) {
	if file, ok := strings.CutPrefix(v, "@"); ok {
		return LoadFlagFile(file)
	}
	host, c, err := ParseFlag(v)
	if err != nil {
		return nil, err
	}
	return Keyring{host: c}, nil
}

// LoadFlagFile reads the file named by an --auth-registry value "@FILE":
// one HOST=USER:PASSWORD a line, as ParseFlag reads them, so that
// passwords stay out of the process list. Blank lines and lines whose
// first non-blank character is '#' are skipped; spaces around a line are
// dropped (a password cannot end in a space). Later lines override
// earlier ones. A file without any entry is an error: it is most likely a
// secret that was not mounted. Errors name the file and the line, and of
// the line's content at most its host, never a password.
func LoadFlagFile(path string) (Keyring, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--auth-registry @%s: %w", path, err)
	}
	k := Keyring{}
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		host, c, err := parseEntry(line)
		if err != nil {
			return nil, fmt.Errorf("--auth-registry @%s, line %d: %w", path, i+1, err)
		}
		k[host] = c
	}
	if len(k) == 0 {
		return nil, fmt.Errorf("--auth-registry @%s: no HOST=USER:PASSWORD line", path)
	}
	return k, nil
}

// parseEntry parses "HOST=USER:PASSWORD" for ParseFlag and LoadFlagFile.
// Its errors start with the host once it is known to be one, and quote
// nothing else.
func parseEntry(s string) (host string, c Credentials, err error) {
	h, userpass, ok := strings.Cut(s, "=")
	if !ok {
		return "", Credentials{}, errors.New("want HOST=USER:PASSWORD")
	}
	host, err = normalizeHost(h)
	if err != nil {
		return "", Credentials{}, err
	}
	user, pass, ok := strings.Cut(userpass, ":")
	if c, err = checkCreds(user, pass, ok); err != nil {
		return "", Credentials{}, fmt.Errorf("%s: %w", host, err)
	}
	return host, c, nil
}

// ParseAuthRegistries parses the AUTH_REGISTRIES variable of
// rpardini/docker-registry-proxy: space-separated "host:user:password"
// entries. Neither host nor user may contain ':'; the password is everything
// after the second ':'. Docker Hub's entry there is "auth.docker.io", which
// Lookup treats as a Docker Hub alias. AUTH_REGISTRY_DELIMITER is not
// supported. Later entries override earlier ones.
func ParseAuthRegistries(s string) (Keyring, error) {
	k := Keyring{}
	for i, entry := range strings.Fields(s) {
		parts := strings.SplitN(entry, ":", 3)
		host, err := normalizeHost(parts[0])
		if err != nil {
			return nil, fmt.Errorf("AUTH_REGISTRIES entry %d: %w", i+1, err)
		}
		if len(parts) < 3 {
			// No quoting: a space in a password splits the entry, and
			// the part after it would be shown here.
			return nil, fmt.Errorf("AUTH_REGISTRIES entry %d: want host:user:password", i+1)
		}
		c, err := checkCreds(parts[1], parts[2], true)
		if err != nil {
			return nil, fmt.Errorf("AUTH_REGISTRIES entry %d (%s): %w", i+1, host, err)
		}
		k[host] = c
	}
	return k, nil
}

func checkCreds(user, pass string, sep bool) (Credentials, error) {
	switch {
	case !sep:
		return Credentials{}, errors.New("want USER:PASSWORD")
	case user == "":
		return Credentials{}, errors.New("empty user")
	case pass == "":
		return Credentials{}, errors.New("empty password")
	}
	return Credentials{Username: user, Password: pass}, nil
}

// dockerConfig is the part of ~/.docker/config.json that LoadDockerConfig
// reads.
type dockerConfig struct {
	Auths map[string]dockerAuth `json:"auths"`
}

type dockerAuth struct {
	Auth     string `json:"auth"`
	Username string `json:"username"`
	Password string `json:"password"`
}

// LoadDockerConfig reads the "auths" of a docker config.json. An entry's
// credentials come from "auth" (base64 of "user:password") when present,
// else from "username" and "password"; entries with neither (as docker
// writes when a credential store holds the secret) are skipped. Keys may be
// URLs such as "https://index.docker.io/v1/"; they become host[:port].
//
// credHelpers, credsStore and identitytoken are ignored: regproxy runs no
// helper programs and does no OAuth refresh. Errors name the file.
func LoadDockerConfig(path string) (Keyring, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("docker config: %w", err) // *PathError names the file
	}
	var cfg dockerConfig
	if err := json.Unmarshal(b, &cfg); err != nil {
		return nil, fmt.Errorf("docker config %s: %w", path, err)
	}
	k := Keyring{}
	// Sorted, so that two keys naming one host resolve the same way each run.
	for _, key := range slices.Sorted(maps.Keys(cfg.Auths)) {
		a := cfg.Auths[key]
		host, err := normalizeHost(key)
		if err != nil {
			return nil, fmt.Errorf("docker config %s: %w", path, err)
		}
		c, ok, err := a.credentials()
		if err != nil {
			return nil, fmt.Errorf("docker config %s: auths[%s]: %w", path, host, err)
		}
		if ok {
			k[host] = c
		}
	}
	return k, nil
}

// credentials returns the entry's credentials, false if it holds none. As in
// docker itself, "auth" wins over "username" and "password".
func (a dockerAuth) credentials() (Credentials, bool, error) {
	if a.Auth == "" {
		if a.Username == "" && a.Password == "" {
			return Credentials{}, false, nil
		}
		c, err := checkCreds(a.Username, a.Password, true)
		return c, err == nil, err
	}
	raw, err := base64.StdEncoding.DecodeString(a.Auth)
	if err != nil {
		// Some tools drop the padding; docker tolerates neither, we do.
		if raw, err = base64.RawStdEncoding.DecodeString(a.Auth); err != nil {
			return Credentials{}, false, errors.New(`"auth" is not base64`)
		}
	}
	user, pass, ok := strings.Cut(string(raw), ":")
	c, err := checkCreds(user, pass, ok)
	if err != nil {
		return Credentials{}, false, fmt.Errorf(`"auth": %w`, err)
	}
	return c, true, nil
}
