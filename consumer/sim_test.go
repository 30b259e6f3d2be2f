package consumer_test

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ferrymq/ferry/backend"
	"github.com/ferrymq/ferry/backend/backendtest"
	"github.com/ferrymq/ferry/backend/embedded"
	"github.com/ferrymq/ferry/commitlog"
	"github.com/ferrymq/ferry/vfs"
)

// TestSimulation runs the seeded simulation of the processing runtime
// (backendtest.Simulate: scenarios, oracle, and the FERRY_SIM_* knobs) on
// the embedded backend, 500 seeds (30 with -short; FERRY_SIM_SEEDS).
//
// It runs inside testing/synctest bubbles: the commit log over MemFS, the
// embedded backend and the consumers all block durably, so time is
// virtual (waits cost nothing) and a seed takes a fraction of a second.
// The embedded backend heartbeats only when its member calls
// Session.Heartbeat, so members can be paused and crashes freeze them
// until their session (60 ms) expires.
func TestSimulation(t *testing.T) {
	const session = 60 * time.Millisecond
	backendtest.Simulate(t, backendtest.SimWorld{
		New: func(t *testing.T) backend.Backend {
			l, err := commitlog.Open(context.Background(), "/log", commitlog.WithFS(vfs.NewMemFS()), commitlog.WithDurability(commitlog.DurabilityNone))
			if err != nil {
				t.Fatal(err)
			}
			b := embedded.New(l, embedded.WithSessionTimeout(session))
			t.Cleanup(func() { b.Close(); l.Close() })
			return b
		},
		Session:            session,
		HeartbeatsByCaller: true,
		Seeds:              500,
		ShortSeeds:         30,
		SeedsEnv:           "FERRY_SIM_SEEDS",
		Bubble:             synctest.Test,
	})
}
