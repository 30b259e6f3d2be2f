// Package testsvc connects tests to the real services of the project
// machine (PostgreSQL, NATS). When a service is unreachable, a test fails
// under CI (CI=true), saying how to start the service, and is skipped
// with the same message elsewhere.
package testsvc

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Unavailable ends t because service cannot be reached: a failure under
// CI, a skip elsewhere. start says how to bring the service up.
func Unavailable(t testing.TB, service string, err error, start string) {
	t.Helper()
	msg := fmt.Sprintf("%s is unreachable (%v); start it with: %s", service, err, start)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// PostgresURL is the server tests use: $FERRY_TEST_POSTGRES, or the
// project machine's server (127.0.0.1:5432, trust auth, database test).
func PostgresURL() string {
	if u := os.Getenv("FERRY_TEST_POSTGRES"); u != "" {
		return u
	}
	return "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
}

const startPostgres = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start (or set FERRY_TEST_POSTGRES to a server's URL)"

// Postgres returns a pool on a schema of its own, created for the test and
// dropped when it ends, so that runs never collide. The pool's connections
// have search_path set to that schema; Schema returns its name.
func Postgres(t testing.TB) (*pgxpool.Pool, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	admin, err := pgxpool.New(ctx, PostgresURL())
	if err == nil {
		err = admin.Ping(ctx)
	}
	if err != nil {
		if admin != nil {
			admin.Close()
		}
		Unavailable(t, "PostgreSQL at "+PostgresURL(), err, startPostgres)
	}
	var b [6]byte
	rand.Read(b[:])
	schema := "ferry_test_" + hex.EncodeToString(b[:])
	if _, err := admin.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		admin.Close()
		t.Fatalf("create schema %s: %v", schema, err)
	}
	cfg, err := pgxpool.ParseConfig(PostgresURL())
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = schema
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		pool.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := admin.Exec(ctx, "DROP SCHEMA "+schema+" CASCADE"); err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
		}
		admin.Close()
	})
	return pool, schema
}

// NATSURL is the NATS server tests use: $FERRY_TEST_NATS, or the project
// machine's server with JetStream at 127.0.0.1:4222.
func NATSURL() string {
	if u := os.Getenv("FERRY_TEST_NATS"); u != "" {
		return u
	}
	return "nats://127.0.0.1:4222"
}

// RequireNATS ends the test (see Unavailable) unless the NATS server of
// NATSURL accepts TCP connections.
func RequireNATS(t testing.TB) string {
	t.Helper()
	u := NATSURL()
	host := u
	if len(host) > 7 && host[:7] == "nats://" {
		host = host[7:]
	}
	c, err := net.DialTimeout("tcp", host, 3*time.Second)
	if err != nil {
		Unavailable(t, "NATS at "+u, err, "start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server (or set FERRY_TEST_NATS)")
	}
	c.Close()
	return u
}
