package azure

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/bloberror"

	"github.com/regproxy/regproxy/cachestore"
)

// errUnreachable is wrapped by New's error when no HTTP answer came back.
var errUnreachable = errors.New("endpoint unreachable")

// shortErr keeps an SDK error for errors.As and errors.Is but prints it on
// one line. azcore's own message spans many lines and repeats the whole
// response, and a transport error's message holds the request URL, whose
// query may be a SAS token.
type shortErr struct {
	msg string
	err error
}

func (e *shortErr) Error() string { return e.msg }
func (e *shortErr) Unwrap() error { return e.err }

// short wraps err in a shortErr.
func short(err error) error {
	var re *azcore.ResponseError
	var ue *url.Error
	switch {
	case errors.As(err, &re):
		msg := fmt.Sprintf("HTTP %d %s", re.StatusCode, http.StatusText(re.StatusCode))
		if re.ErrorCode != "" {
			msg = fmt.Sprintf("HTTP %d %s", re.StatusCode, re.ErrorCode)
		}
		return &shortErr{msg: msg, err: err}
	case errors.As(err, &ue):
		return &shortErr{msg: ue.Err.Error(), err: err}
	case strings.Contains(err.Error(), "\n"):
		// azidentity's chain lists every credential it tried, a line each,
		// with responses framed in lines of dashes.
		words := slices.DeleteFunc(strings.Fields(err.Error()), func(w string) bool {
			return strings.Trim(w, "-") == ""
		})
		return &shortErr{msg: strings.Join(words, " "), err: err}
	}
	return err
}

// isAuthErr reports whether err means that the account, key or credential
// was refused, as opposed to a request the credential may not make.
func isAuthErr(err error) bool {
	var re *azcore.ResponseError
	if errors.As(err, &re) && re.StatusCode == http.StatusUnauthorized {
		return true
	}
	var af *azidentity.AuthenticationFailedError
	return bloberror.HasCode(err, bloberror.AuthenticationFailed, bloberror.AuthorizationFailure) ||
		errors.As(err, &af)
}

// isTransportErr reports whether err came before any HTTP answer: a failed
// dial, TLS handshake or connection.
func isTransportErr(err error) bool {
	var re *azcore.ResponseError
	if errors.As(err, &re) {
		return false
	}
	var ue *url.Error
	var ne net.Error
	return errors.As(err, &ue) || errors.As(err, &ne)
}

// isNotFound reports whether err means that the blob does not exist. A
// missing container is a fault of its own, not a cache miss.
func isNotFound(err error) bool {
	var re *azcore.ResponseError
	return bloberror.HasCode(err, bloberror.BlobNotFound) ||
		errors.As(err, &re) && re.StatusCode == http.StatusNotFound && re.ErrorCode == ""
}

// opErr is the error of operation op on key.
func opErr(op, key string, err error) error {
	if isNotFound(err) {
		return fmt.Errorf("cachestore/azure: %s %s: %w", op, key, cachestore.ErrNotFound)
	}
	return fmt.Errorf("cachestore/azure: %s %s: %w", op, key, short(err))
}
