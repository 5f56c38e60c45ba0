package proxy

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
)

// regError is an error a handler returns to have it answered in the OCI
// distribution error format ({"errors":[{"code":…,"message":…}]}). Cause,
// when set, is logged but never shown to the client.
type regError struct {
	Status  int
	Code    string
	Message string
	Cause   error
}

func (e *regError) Error() string {
	if e.Cause != nil {
		return fmt.Sprintf("%s: %s: %v", e.Code, e.Message, e.Cause)
	}
	return e.Code + ": " + e.Message
}

func (e *regError) Unwrap() error { return e.Cause }

// Error codes from the OCI distribution spec, "Error Codes", plus
// UNAVAILABLE for an upstream regproxy cannot reach.
func errNameInvalid(msg string) *regError {
	return &regError{Status: http.StatusBadRequest, Code: "NAME_INVALID", Message: msg}
}

func errDigestInvalid(msg string) *regError {
	return &regError{Status: http.StatusBadRequest, Code: "DIGEST_INVALID", Message: msg}
}

func errTagInvalid(msg string) *regError {
	return &regError{Status: http.StatusBadRequest, Code: "TAG_INVALID", Message: msg}
}

func errPathInvalid(msg string) *regError {
	return &regError{Status: http.StatusBadRequest, Code: "UNSUPPORTED", Message: msg}
}

func errUpstream(host string, cause error) *regError {
	return &regError{Status: http.StatusBadGateway, Code: "UNAVAILABLE",
		Message: "upstream registry " + host + " unreachable", Cause: cause}
}

func errInternal(cause error) *regError {
	return &regError{Status: http.StatusInternalServerError, Code: "UNKNOWN",
		Message: "internal error", Cause: cause}
}

type errorBody struct {
	Errors []errorEntry `json:"errors"`
}

type errorEntry struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// writeError answers err as OCI error JSON: a *regError with its own status
// and code, anything else as a 500 whose detail stays in the log.
func writeError(w http.ResponseWriter, err error) {
	var re *regError
	if !errors.As(err, &re) {
		re = errInternal(err)
	}
	body, _ := json.Marshal(errorBody{Errors: []errorEntry{{Code: re.Code, Message: re.Message}}})
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Docker-Distribution-Api-Version", "registry/2.0")
	h.Del("Content-Length")
	w.WriteHeader(re.Status)
	w.Write(body)
}
