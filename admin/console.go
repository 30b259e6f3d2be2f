package admin

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/base64"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"time"
)

// The web console: static pages under ConsolePath that call the API with
// the browser's session cookie, and nothing else. A token typed into the
// login form is kept in an HTTP-only, same-site cookie (SessionCookie);
// every mutating request authenticated by it must carry the session's
// CSRF token in CSRFHeader, and every mutating request from another site
// is refused whatever its credentials (http.CrossOriginProtection).
const (
	// ConsolePath is where the console is served.
	ConsolePath = "/ui/"
	// SessionCookie holds a console session's token.
	SessionCookie = "ferry_session"
	// CSRFHeader carries a console session's CSRF token (GET /ui/session
	// returns it) on mutating requests.
	CSRFHeader = "X-Ferry-CSRF"
	// SessionTTL is how long a console login lasts.
	SessionTTL = 12 * time.Hour
)

//go:embed console
var consoleFiles embed.FS

// consoleCSP keeps the console to its own scripts and styles and to the
// API: no inline script, no framing, no form posted elsewhere.
const consoleCSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
	"frame-ancestors 'none'; base-uri 'none'; form-action 'self'"

var loginPage = template.Must(template.ParseFS(consoleFiles, "console/login.html"))

// csrfToken is a session's CSRF token: bound to its token, which only the
// server and the cookie hold, so a page of another site can neither read
// nor forge it.
func csrfToken(token string) string {
	m := hmac.New(sha256.New, []byte(token))
	m.Write([]byte("ferry console csrf v1"))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// Session is what GET /ui/session returns: who is logged in, and the CSRF
// token its mutating requests carry.
type Session struct {
	Name   string `json:"name"`
	Method string `json:"method"`
	CSRF   string `json:"csrf,omitempty"`
	// Auth says the API authenticates callers (false: everyone is
	// anonymous, on a loopback listener); LoginPath is where to log in.
	Auth      bool   `json:"auth"`
	LoginPath string `json:"login_path"`
}

// mountConsole adds the console's routes to h's mux.
func (h *Handler) mountConsole() {
	static, err := fs.Sub(consoleFiles, "console")
	if err != nil {
		panic(err) // the embedded directory is part of the build
	}
	files := http.StripPrefix(ConsolePath, http.FileServerFS(static))
	h.mux.HandleFunc("GET "+ConsolePath, func(w http.ResponseWriter, r *http.Request) {
		consoleHeaders(w)
		files.ServeHTTP(w, r)
	})
	h.mux.HandleFunc("GET "+ConsolePath+"login", func(w http.ResponseWriter, r *http.Request) {
		h.renderLogin(w, http.StatusOK, "")
	})
	h.mux.HandleFunc("POST "+ConsolePath+"login", h.login)
	h.mux.HandleFunc("POST "+ConsolePath+"logout", h.logout)
	h.mux.HandleFunc("GET "+ConsolePath+"session", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		who, err := h.auth.Authenticate(r)
		if err != nil {
			writeError(w, requestID(r), err)
			return
		}
		writeJSON(w, http.StatusOK, Session{Name: who.Name, Method: who.Method, CSRF: who.csrf, Auth: h.auth != nil, LoginPath: ConsolePath + "login"})
	})
	h.mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, ConsolePath, http.StatusSeeOther)
	})
}

// consoleHeaders sets the headers of every console page.
func consoleHeaders(w http.ResponseWriter) {
	w.Header().Set("Content-Security-Policy", consoleCSP)
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Referrer-Policy", "no-referrer")
	w.Header().Set("X-Frame-Options", "DENY")
}

func (h *Handler) renderLogin(w http.ResponseWriter, status int, problem string) {
	consoleHeaders(w)
	if status == http.StatusTooManyRequests {
		w.Header().Set("Retry-After", "1")
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	loginPage.Execute(w, struct {
		Problem string
		Auth    bool
	}{problem, h.auth != nil})
}

// maxLoginBody bounds the login form.
const maxLoginBody = 4096

// login checks the token of the login form and keeps it in the session
// cookie. Every attempt is audited (verb login).
func (h *Handler) login(w http.ResponseWriter, r *http.Request) {
	c := &call{h: h, w: w, r: r, id: requestID(r)}
	c.audit = AuditData{Method: r.Method, Path: r.URL.Path, RequestID: c.id, Actor: "unauthenticated", Auth: "none", Target: "console"}
	fail := func(status int, err error) {
		h.audit(c, VerbLogin, status, err)
		h.renderLogin(w, status, err.Error())
	}
	if err := h.cop.Check(r); err != nil {
		fail(http.StatusForbidden, fmt.Errorf("a login form posted from another site: refused: %w", ErrForbidden))
		return
	}
	if h.auth == nil {
		http.Redirect(w, r, ConsolePath, http.StatusSeeOther) // nothing to log in to
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxLoginBody)
	if err := r.ParseForm(); err != nil {
		fail(http.StatusBadRequest, fmt.Errorf("login form: %v: %w", err, ErrUnauthenticated))
		return
	}
	token := r.PostForm.Get("token")
	if token == "" {
		fail(http.StatusUnauthorized, fmt.Errorf("no token given: paste the token the access file holds the hash of: %w", ErrUnauthenticated))
		return
	}
	who, err := h.auth.token(token)
	if err != nil {
		status, _ := errorCode(err) // 401, or 429 when too many were tried
		fail(status, err)
		return
	}
	c.audit.Actor, c.audit.Auth = who.Name, "console"
	http.SetCookie(w, &http.Cookie{Name: SessionCookie, Value: token, Path: "/", MaxAge: int(SessionTTL / time.Second),
		HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode})
	h.audit(c, VerbLogin, http.StatusSeeOther, nil)
	http.Redirect(w, r, ConsolePath, http.StatusSeeOther)
}

// logout ends the session: its cookie is cleared. It is a mutating
// request, so it needs the session's CSRF token.
func (h *Handler) logout(w http.ResponseWriter, r *http.Request) {
	c := &call{h: h, w: w, r: r, id: requestID(r)}
	w.Header().Set("X-Request-Id", c.id)
	err := c.identify()
	if cerr := h.cop.Check(r); errors.Is(err, ErrUnauthenticated) && cerr != nil {
		// A page of another site cannot end the session either (its
		// request comes without the same-site cookie, so unauthenticated).
		err = fmt.Errorf("a logout posted from another site: refused: %v: %w", cerr, ErrForbidden)
	}
	if err != nil && !errors.Is(err, ErrUnauthenticated) {
		h.audit(c, VerbLogout, http.StatusForbidden, err)
		writeError(w, c.id, err)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: SessionCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, Secure: r.TLS != nil,
		SameSite: http.SameSiteStrictMode})
	h.audit(c, VerbLogout, http.StatusNoContent, nil)
	w.WriteHeader(http.StatusNoContent)
}

// Audit verbs of the console's own requests; no role grants them.
const (
	VerbLogin  = "login"
	VerbLogout = "logout"
)

// checkOrigin refuses a mutating request that a browser sent from another
// site, and one authenticated by a console session that lacks the
// session's CSRF token.
func (c *call) checkOrigin() error {
	if !mutating(c.r.Method) {
		return nil
	}
	if err := c.h.cop.Check(c.r); err != nil {
		return fmt.Errorf("%s %s sent by a page of another site (Origin %q): refused: %v: %w", c.r.Method, c.r.URL.Path,
			c.r.Header.Get("Origin"), err, ErrForbidden)
	}
	if c.who.csrf != "" && subtle.ConstantTimeCompare([]byte(c.r.Header.Get(CSRFHeader)), []byte(c.who.csrf)) != 1 {
		return fmt.Errorf("%s %s with the console's session but without its CSRF token (header %s, from GET %ssession): refused: %w",
			c.r.Method, c.r.URL.Path, CSRFHeader, ConsolePath, ErrForbidden)
	}
	return nil
}
