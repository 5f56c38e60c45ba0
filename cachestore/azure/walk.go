package azure

import (
	"context"
	"fmt"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/bloberror"

	"github.com/regproxy/regproxy/cachestore"
)

// What regproxy cache needs of a container: a list of its entries with
// their last use, and a delete that cannot remove an entry committed
// again since it was chosen.

var (
	_ cachestore.Walker      = (*Store)(nil)
	_ cachestore.CondDeleter = (*Store)(nil)
)

// lastUse is an entry's last use as Azure records it: its last access
// when the account tracks access (Azure updates it at most once a day, on
// a read or a write), else its last commit.
func lastUse(modified, accessed *time.Time) time.Time {
	var t time.Time
	if modified != nil {
		t = *modified
	}
	if accessed != nil && accessed.After(t) {
		t = *accessed
	}
	return t
}

// Walk implements cachestore.Walker by listing the container, 5000
// entries a request. Each entry's LastUse is lastUse's: Azure's last
// access time where last-access tracking is on, else its last commit,
// since the store records no read of its own. Blobs whose names are not
// keys (put there by hand) are skipped.
func (s *Store) Walk(ctx context.Context, fn func(cachestore.Entry) error) error {
	pager := s.c.NewListBlobsFlatPager(nil)
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("cachestore/azure: walk %s: %w", s.where, short(err))
		}
		for _, item := range page.Segment.BlobItems {
			if item.Name == nil || !cachestore.ValidKey(*item.Name) || item.Properties == nil {
				continue
			}
			e := cachestore.Entry{Key: *item.Name,
				LastUse: lastUse(item.Properties.LastModified, item.Properties.LastAccessedOn)}
			if item.Properties.ContentLength != nil {
				e.Size = *item.Properties.ContentLength
			}
			if err := fn(e); err != nil {
				return err
			}
		}
	}
	return nil
}

// DeleteIf implements cachestore.CondDeleter across replicas: it reads the
// entry's properties, calls cond, and deletes the blob only if it still has
// the ETag it had then (If-Match). A commit of the key by any replica in
// between (a Record replaced, a Content entry deleted and committed again)
// changes the ETag, and the delete is then a no-op that reports false.
func (s *Store) DeleteIf(ctx context.Context, key string, cond func() bool) (bool, error) {
	b, err := s.blob(key)
	if err != nil {
		return false, err
	}
	p, err := b.GetProperties(ctx, nil)
	if err != nil {
		return false, opErr("delete", key, err)
	}
	if !cond() {
		return false, nil
	}
	_, err = b.Delete(ctx, &blob.DeleteOptions{AccessConditions: &blob.AccessConditions{
		ModifiedAccessConditions: &blob.ModifiedAccessConditions{IfMatch: p.ETag},
	}})
	switch {
	case err == nil:
		return true, nil
	case bloberror.HasCode(err, bloberror.ConditionNotMet):
		return false, nil
	}
	return false, opErr("delete", key, err)
}
