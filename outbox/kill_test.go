package outbox

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ferrymq/ferry"

	"github.com/ferrymq/ferry/backend/embedded"
	"github.com/ferrymq/ferry/commitlog"
	"github.com/ferrymq/ferry/internal/testsvc"
)

const (
	childSchemaEnv = "FERRY_OUTBOX_CHILD_SCHEMA"
	childDirEnv    = "FERRY_OUTBOX_CHILD_DIR"
	childKillEnv   = "FERRY_OUTBOX_CHILD_KILL_AT"
)

func TestMain(m *testing.M) {
	if schema := os.Getenv(childSchemaEnv); schema != "" {
		if err := relayChild(schema); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// relayChild relays into a log on disk (fsync before ack) and SIGKILLs
// itself right after its kill-at-th publish, before marking rows sent.
func relayChild(schema string) error {
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(testsvc.PostgresURL())
	if err != nil {
		return err
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = schema
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return err
	}
	l, err := commitlog.Open(ctx, os.Getenv(childDirEnv))
	if err != nil {
		return err
	}
	b := embedded.New(l)
	if err := b.EnsureTopic(ctx, topic, 4); err != nil {
		return err
	}
	killAt, _ := strconv.Atoi(os.Getenv(childKillEnv))
	r := New(pool).NewRelay(b, WithBatchSize(40))
	publishes := 0
	r.afterPublish = func() error {
		publishes++
		if publishes == killAt {
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {}
		}
		return nil
	}
	for {
		if n, err := r.RelayOnce(ctx); err != nil || n == 0 {
			return err
		}
	}
}

// A relay process killed with SIGKILL between publishing a batch (fsynced
// in the log) and marking it sent loses nothing and, thanks to producer
// deduplication by message ID, duplicates nothing downstream.
func TestRelayKilledBetweenPublishAndMarkSent(t *testing.T) {
	pool, schema := testsvc.Postgres(t)
	ctx := context.Background()
	if err := Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	o := New(pool)
	keys := []string{"a", "b", "c", "d", "e"}
	const perKey = 60
	for i := range perKey {
		var batch = make([]*ferry.Message, 0, len(keys))
		for _, k := range keys {
			batch = append(batch, seqMsg(k, i))
		}
		addInTx(t, pool, o, batch...)
	}
	dir := t.TempDir()
	for round, killAt := range []int{1, 2, 1, 3} {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), childSchemaEnv+"="+schema, childDirEnv+"="+dir, childKillEnv+"="+strconv.Itoa(killAt))
		out, err := cmd.CombinedOutput()
		ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
		if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
			t.Fatalf("round %d: relay child was not killed: %v\n%s", round, err, out)
		}
	}
	if n := pending(t, o); n == 0 || n == perKey*int64(len(keys)) {
		t.Fatalf("after the kills %d rows pending: the kills did not land mid-way", n)
	}
	l, err := commitlog.Open(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	b := embedded.New(l)
	defer b.Close()
	r := o.NewRelay(b)
	for pending(t, o) > 0 {
		if _, err := r.RelayOnce(ctx); err != nil {
			t.Fatal(err)
		}
	}
	checkPerKey(t, readTopic(t, l), keys, perKey)
}
