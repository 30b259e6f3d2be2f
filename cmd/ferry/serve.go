package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/ferrymq/ferry/broker"
	"github.com/ferrymq/ferry/commitlog"
)

func newServeCmd(g *globals) *cobra.Command {
	var (
		listen, advertise, durability string
		insecure, autoCreate          bool
	)
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve the data directory to Kafka clients (one node, fsync before ack)",
		Long: `serve owns the data directory and answers the Kafka protocol on --listen, so
that any Kafka client (franz-go, librdkafka and kcat, Java) and ferry's own
runtime (backend/kafka) share the log across processes. Every record a
produce with acks >= 1 acknowledged is fsynced first (--durability always).

It is one node: topics have replication factor 1. Transactions, TLS, SASL
and ACLs are not served yet, so it listens on a loopback address unless
--insecure is given. SIGTERM or Ctrl-C stops it: requests already read are
answered, then the log is closed.

It prints "serving DIR on ADDR" once it listens.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, err := commitlog.ParseDurability(durability)
			if err != nil {
				return usageError{err}
			}
			host, _, err := net.SplitHostPort(listen)
			if err != nil {
				return usageError{fmt.Errorf("--listen %q: want host:port: %w", listen, err)}
			}
			if !isLoopback(host) && !insecure {
				return usageError{fmt.Errorf("--listen %s: not a loopback address, and clients are not authenticated (TLS and SASL are not served yet): listen on 127.0.0.1 or pass --insecure", listen)}
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, os.Interrupt)
			defer stop()
			logger := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil))
			l, err := g.openDir(ctx, true, true, commitlog.WithDurability(d), commitlog.WithLogger(logger))
			if err != nil {
				return err
			}
			opts := []broker.Opt{broker.WithLogger(logger), broker.WithAutoCreateTopics(autoCreate)}
			if advertise != "" {
				opts = append(opts, broker.WithAdvertisedAddr(advertise))
			}
			srv, err := broker.New(l, opts...)
			if err != nil {
				l.Close()
				return usageError{err}
			}
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				l.Close()
				return fmt.Errorf("listen on %s: %w", listen, err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "serving %s on %s\n", l.Dir(), ln.Addr())
			serveErr := make(chan error, 1)
			go func() { serveErr <- srv.Serve(ctx, ln) }()
			select {
			case <-ctx.Done():
			case err = <-serveErr:
			}
			logger.Info("stopping: answering the requests read, then closing the log")
			srv.Close()
			if cerr := l.Close(); cerr != nil {
				err = errors.Join(err, cerr)
			}
			return err
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:9092", "address to listen on (host:port; port 0 picks one)")
	cmd.Flags().StringVar(&advertise, "advertise", "", "host:port clients are told to connect to (default: the address they connected to)")
	cmd.Flags().StringVar(&durability, "durability", "always", "when appends are acknowledged: always (after fsync), interval, none")
	cmd.Flags().BoolVar(&insecure, "insecure", false, "allow a non-loopback --listen without authentication")
	cmd.Flags().BoolVar(&autoCreate, "auto-create-topics", false, "create a topic a client names in a metadata request (Kafka's auto.create.topics.enable)")
	return cmd
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
