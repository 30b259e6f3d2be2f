package outbox

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

//go:embed sql/*.sql
var migrationFiles embed.FS

// Migration is one versioned step of the schema.
type Migration struct {
	Version int
	Name    string
	SQL     string // with {{.Schema}} where the schema qualifier goes
}

// Migrations lists the schema's steps in order, for review or for users
// who run migrations with their own tool (substitute {{.Schema}} with
// `"schema".` or with nothing).
func Migrations() []Migration {
	names, err := fs.Glob(migrationFiles, "sql/*.sql")
	if err != nil {
		panic(err) // the pattern is constant
	}
	sort.Strings(names)
	out := make([]Migration, 0, len(names))
	for _, n := range names {
		base := strings.TrimPrefix(n, "sql/")
		v, err := strconv.Atoi(base[:3])
		if err != nil {
			panic(fmt.Sprintf("outbox: migration %s: want a three-digit version prefix", n))
		}
		b, _ := migrationFiles.ReadFile(n)
		out = append(out, Migration{Version: v, Name: strings.TrimSuffix(base[4:], ".sql"), SQL: string(b)})
	}
	return out
}

// migrationLock serializes concurrent Migrate calls (an advisory lock
// taken in the migration's transaction).
const migrationLock = 0x66657272 // "ferr"

// Migrate brings the schema (the outbox and inbox tables) up to date: the
// missing versions are applied and recorded in ferry_migrations in one
// transaction, so a failure leaves the schema as it was. Running it again,
// or from several processes at once, is safe.
func Migrate(ctx context.Context, pool *pgxpool.Pool, opts ...Option) error {
	c := newConfig(opts)
	tx, err := pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("outbox: migrate: %w", err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", migrationLock); err != nil {
		return fmt.Errorf("outbox: migrate: lock: %w", err)
	}
	if _, err := tx.Exec(ctx, c.expand(`CREATE TABLE IF NOT EXISTS {{.Schema}}ferry_migrations (
		version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`)); err != nil {
		return fmt.Errorf("outbox: migrate: %w", err)
	}
	applied := map[int]bool{}
	rows, err := tx.Query(ctx, c.expand("SELECT version FROM {{.Schema}}ferry_migrations"))
	if err != nil {
		return fmt.Errorf("outbox: migrate: %w", err)
	}
	versions, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		return fmt.Errorf("outbox: migrate: %w", err)
	}
	for _, v := range versions {
		applied[int(v)] = true
	}
	for _, m := range Migrations() {
		if applied[m.Version] {
			continue
		}
		if _, err := tx.Exec(ctx, c.expand(m.SQL)); err != nil {
			return fmt.Errorf("outbox: migration %03d_%s: %w", m.Version, m.Name, err)
		}
		if _, err := tx.Exec(ctx, c.expand("INSERT INTO {{.Schema}}ferry_migrations (version, name) VALUES ($1, $2)"), m.Version, m.Name); err != nil {
			return fmt.Errorf("outbox: migration %03d_%s: %w", m.Version, m.Name, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("outbox: migrate: commit: %w", err)
	}
	return nil
}
