package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferrymq/ferry/admin"
)

// adminFlags configure an admin API listener (ferry admin, ferry serve
// --admin).
type adminFlags struct {
	listen, auth, tlsCert, tlsKey, tlsCA string
	insecure                             bool
}

func (f *adminFlags) add(cmd *cobra.Command, listenFlag, listenDefault string) {
	cmd.Flags().StringVar(&f.listen, listenFlag, listenDefault, "address of the admin API (host:port; port 0 picks one)")
	cmd.Flags().StringVar(&f.auth, "auth", "", "access file (JSON: tokens, client certificates, roles; see ferry admin --help)")
	cmd.Flags().StringVar(&f.tlsCert, "admin-tls-cert", "", "PEM certificate file: serve the admin API over TLS")
	cmd.Flags().StringVar(&f.tlsKey, "admin-tls-key", "", "PEM private key of --admin-tls-cert")
	cmd.Flags().StringVar(&f.tlsCA, "admin-client-ca", "", "PEM CA file: accept client certificates it signed (named in the access file's clients)")
	if cmd.Flags().Lookup("insecure") == nil {
		cmd.Flags().BoolVar(&f.insecure, "insecure", false, "allow a non-loopback address without authentication over TLS")
	}
}

// listener checks the flags and opens the listener and the access file.
func (f *adminFlags) listener(insecure bool) (net.Listener, *admin.Auth, string, error) {
	host, _, err := net.SplitHostPort(f.listen)
	if err != nil {
		return nil, nil, "", usageError{fmt.Errorf("admin address %q: want host:port: %w", f.listen, err)}
	}
	if (f.tlsCert == "") != (f.tlsKey == "") || f.tlsCA != "" && f.tlsCert == "" {
		return nil, nil, "", usageError{errors.New("--admin-tls-cert and --admin-tls-key go together (and --admin-client-ca needs them)")}
	}
	if !isLoopback(host) && !insecure && (f.auth == "" || f.tlsCert == "") {
		return nil, nil, "", usageError{fmt.Errorf("admin address %s: not a loopback address, and callers would not be authenticated over TLS: "+
			"give --auth and --admin-tls-cert/--admin-tls-key, listen on 127.0.0.1, or pass --insecure", f.listen)}
	}
	var auth *admin.Auth
	if f.auth != "" {
		if auth, err = admin.LoadAuth(f.auth); err != nil {
			return nil, nil, "", usageError{err}
		}
	}
	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		return nil, nil, "", fmt.Errorf("admin API: listen on %s: %w", f.listen, err)
	}
	scheme := "http"
	if f.tlsCert != "" {
		conf, err := serverTLS(f.tlsCert, f.tlsKey, f.tlsCA)
		if err != nil {
			ln.Close()
			return nil, nil, "", usageError{err}
		}
		if conf.ClientCAs != nil {
			// A certificate is one way in; a token is the other.
			conf.ClientAuth = tls.VerifyClientCertIfGiven
		}
		ln, scheme = tls.NewListener(ln, conf), "https"
	}
	return ln, auth, fmt.Sprintf("%s://%s", scheme, ln.Addr()), nil
}

// serveAdmin serves svc's API on ln until ctx ends, then stops
// gracefully: requests in progress (a redrive) are given 10 s.
func serveAdmin(ctx context.Context, ln net.Listener, h http.Handler, logger *slog.Logger) error {
	hs := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
		// Requests in progress at shutdown get the grace below; their
		// context is not the one that ends the server.
		BaseContext: func(net.Listener) context.Context { return context.WithoutCancel(ctx) }}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shut, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return hs.Shutdown(shut)
}

func newAdminCmd(g *globals) *cobra.Command {
	var f adminFlags
	cmd := &cobra.Command{
		Use:   "admin",
		Short: "Serve the admin API (topics, messages, groups, DLQ, replay, audit) over --dir, --nats or --kafka",
		Long: `admin serves ferry's admin API: a JSON API under /api/v1 (OpenAPI
document at /api/v1/openapi.json) for topics, messages, consumer groups,
dead letters, replay and the audit log, over the data directory (--dir,
which it then owns), NATS JetStream (--nats URL) or Kafka (--kafka brokers).
Every command of this CLI works through it with --server URL.

A service that runs its consumers in its own process mounts the same API
(admin.NewHandler), so that it shows their live state and redrives while
they run; ferry serve --admin mounts it beside the Kafka listener.

Access (--auth FILE, JSON):
  {"tokens":  [{"name": "ops", "hash": "$2a$12$...", "roles": ["operator"]}],
   "clients": [{"subject": "CN=ops,O=Example", "roles": ["operator"]}],
   "roles": {"operator": [{"verbs": ["read", "redrive"], "topics": ["*"], "groups": ["*"]}]}}
Verbs: read, produce, replay, redrive, purge, reset, admin (all of them).
Patterns are globs; a DLQ is a topic (GROUP.dlq). ferry admin token prints
a new token and its entry. A denied request gets 403 naming the verb, and
every mutating request, allowed or denied, is appended to the audit topic
ferry.audit (ferry audit lists it).

Without --auth every caller may do everything, so it listens only on a
loopback address unless --insecure; a public address also needs TLS
(--admin-tls-cert, --admin-tls-key; --admin-client-ca accepts client
certificates). It prints "admin API on URL" once it listens.

The web console is served at URL/ui/: topics and a message browser, groups
with their lag over time (sampled every 10s), dead letters with redrive
and purge, and the audit log. Log in with a token of the access file; the
console keeps it in an HTTP-only cookie, and its changes carry a CSRF
token.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if g.remote.server != "" {
				return usageError{errors.New("ferry admin serves the API; --server is for the commands that call it")}
			}
			ln, auth, url, err := f.listener(f.insecure)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, os.Interrupt)
			defer stop()
			api, closeAPI, err := g.api(ctx, cmd, true, false)
			if err != nil {
				ln.Close()
				return err
			}
			defer closeAPI()
			logger := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil))
			svc := api.(*admin.Service)
			fmt.Fprintf(cmd.OutOrStdout(), "admin API on %s (over %s)\nconsole on %s%s\n", url, g.remote.where(g), url, admin.ConsolePath)
			go svc.RecordLag(ctx, admin.DefaultLagInterval)
			return serveAdmin(ctx, ln, admin.NewHandler(svc, auth), logger)
		},
	}
	f.add(cmd, "listen", "127.0.0.1:8080")
	cmd.AddCommand(newAdminTokenCmd(g), newAdminHashCmd())
	return cmd
}

func newAdminTokenCmd(g *globals) *cobra.Command {
	var name string
	var roles []string
	cmd := &cobra.Command{
		Use:   "token --name NAME --role ROLE",
		Short: "Make a new random token and print it with its access-file entry (only the hash is kept there)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if name == "" {
				return usageError{errors.New("name the token with --name (it is who the audit log says acted)")}
			}
			raw := make([]byte, 32)
			rand.Read(raw)
			token := "ferry_" + base64.RawURLEncoding.EncodeToString(raw)
			hash, err := admin.HashToken(token)
			if err != nil {
				return err
			}
			entry := admin.TokenConfig{Name: name, Hash: hash, Roles: roles}
			if entry.Roles == nil {
				entry.Roles = []string{}
			}
			out := struct {
				Token string            `json:"token"`
				Entry admin.TokenConfig `json:"entry"`
			}{token, entry}
			return g.print(cmd.OutOrStdout(), out, func(w *tabwriter.Writer) {
				b, _ := json.Marshal(entry)
				fmt.Fprintf(w, "token (give it to the caller; it is not stored): %s\naccess-file entry (under \"tokens\"): %s\n", token, b)
			})
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "the token's name (required)")
	cmd.Flags().StringSliceVar(&roles, "role", nil, "a role the token has (repeatable)")
	return cmd
}

func newAdminHashCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "hash-token",
		Short: "Print the bcrypt hash of a token read from stdin, for the access file",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			line, err := bufio.NewReader(io.LimitReader(cmd.InOrStdin(), 4096)).ReadString('\n')
			if err != nil && !errors.Is(err, io.EOF) {
				return err
			}
			hash, err := admin.HashToken(strings.TrimRight(line, "\r\n"))
			if err != nil {
				return usageError{err}
			}
			fmt.Fprintln(cmd.OutOrStdout(), hash)
			return nil
		},
	}
}

func newAuditCmd(g *globals) *cobra.Command {
	var q admin.AuditQuery
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "List the audit log: who did what through the admin API, and how it ended",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			api, closeAPI, err := g.api(cmd.Context(), cmd, false, false)
			if err != nil {
				return err
			}
			defer closeAPI()
			recs, err := api.AuditLog(cmd.Context(), q)
			if err != nil {
				return err
			}
			return g.print(cmd.OutOrStdout(), recs, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "TIME\tACTOR\tVERB\tTARGET\tRESULT\tSTATUS\tCOUNTS\tREQUEST")
				for _, r := range recs {
					d := r.Data
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", r.Time.Format(time.RFC3339), d.Actor, d.Verb, d.Target, d.Result, d.Status, d.Counts, d.RequestID)
				}
			})
		},
	}
	cmd.Flags().StringVar(&q.Actor, "actor", "", "only records of this token name or certificate subject")
	cmd.Flags().StringVar(&q.Verb, "verb", "", "only records of this verb: "+strings.Join(admin.Verbs, ", "))
	cmd.Flags().StringVar(&q.Result, "result", "", "only records with this result: ok, denied, failed")
	cmd.Flags().StringVar(&q.Since, "since", "", "only records after this RFC 3339 time or duration ago (1h)")
	cmd.Flags().IntVar(&q.Limit, "limit", 0, "the newest this many (0: 100)")
	return cmd
}
