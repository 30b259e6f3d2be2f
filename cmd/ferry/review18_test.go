package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"
)

// serveAdmin promises in-progress requests 10 s on shutdown, but the
// request contexts derive from the cancelled ctx (BaseContext).
func TestReviewServeAdminGraceCancelsRequests(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	started := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		select {
		case <-time.After(time.Second): // a redrive that needs 1 s more
			w.Write([]byte("done"))
		case <-r.Context().Done():
			http.Error(w, "cancelled", 500)
		}
	})
	done := make(chan error, 1)
	go func() { done <- serveAdmin(ctx, ln, h, slog.New(slog.NewTextHandler(io.Discard, nil))) }()
	resc := make(chan string, 1)
	go func() {
		resp, err := http.Get("http://" + ln.Addr().String() + "/")
		if err != nil {
			resc <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		resc <- string(b)
	}()
	<-started
	cancel() // SIGTERM
	if got := <-resc; got != "done" {
		t.Errorf("request in progress at shutdown: got %q; want it to finish within the 10 s grace", got)
	}
	<-done
}
