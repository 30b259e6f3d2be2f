package consumer

import (
	"context"
	"encoding/json"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/retry"
)

// Typed adapts a handler of decoded values: decode turns the payload into
// a T; a payload that does not decode is dead-lettered at once with class
// "decode" (retrying cannot fix it), never a crash loop.
func Typed[T any](decode func([]byte, *T) error, h func(ctx context.Context, m *ferry.Message, v T) error) Handler {
	return func(ctx context.Context, m *ferry.Message) error {
		var v T
		if err := decode(m.Payload, &v); err != nil {
			return &retry.DecodeError{Err: err}
		}
		return h(ctx, m, v)
	}
}

// JSON is Typed with encoding/json.
func JSON[T any](h func(ctx context.Context, m *ferry.Message, v T) error) Handler {
	return Typed(func(b []byte, v *T) error { return json.Unmarshal(b, v) }, h)
}
