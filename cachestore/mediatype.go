package cachestore

// TypedWriter is implemented by writers that can keep a media type with the
// entry, so that a manifest and its type are one object read in one request
// (on Azure, the blob's Content-Type). SetMediaType must be called before
// Commit; the last call wins, and "" means no media type.
type TypedWriter interface {
	SetMediaType(mediaType string)
}

// TypedReader is implemented by the readers of stores whose writers are
// TypedWriters. MediaType returns the media type the entry was committed
// with, or "" if it had none.
type TypedReader interface {
	MediaType() string
}
