package admin

import (
	"bytes"
	"encoding/json"
	"flag"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite openapi.json from the route table")

// TestOpenAPIDocument: the committed document is what the route table
// generates, so a route added, removed or changed without the document
// fails here (and in CI).
func TestOpenAPIDocument(t *testing.T) {
	want, err := OpenAPI()
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		if err := os.WriteFile("openapi.json", want, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	if !bytes.Equal(openAPIDocument, want) {
		t.Fatal("openapi.json disagrees with the route table: run go test ./admin -run TestOpenAPIDocument -update, and review the diff")
	}
}

// TestOpenAPIPathsServed: every operation the served document names
// reaches a route of the handler (not the catch-all's no-route error), and
// the document names every route.
func TestOpenAPIPathsServed(t *testing.T) {
	h := NewHandler(NewService(newTestBackend(t)), nil)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", Prefix+"/openapi.json", nil))
	var doc struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &doc); err != nil {
		t.Fatalf("served document: %v", err)
	}
	n := 0
	param := regexp.MustCompile(`\{[a-z]+\}`)
	for path, ops := range doc.Paths {
		for method := range ops {
			n++
			url := param.ReplaceAllString(path, "0")
			req := httptest.NewRequest(strings.ToUpper(method), url, strings.NewReader("{"))
			req.Header.Set("Content-Type", "application/json")
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if strings.Contains(rec.Body.String(), "no route") {
				t.Errorf("%s %s: the document names it, the handler has no route: %s", method, path, rec.Body)
			}
		}
	}
	if n != len(routes) {
		t.Errorf("document has %d operations, the route table %d", n, len(routes))
	}
}
