package admin

import (
	_ "embed"
	"encoding/json"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"time"
)

// openAPIDocument is the API's OpenAPI 3.1 document, served at
// /api/v1/openapi.json. It is generated from the route table
// (OpenAPI; go test ./admin -run TestOpenAPIDocument -update writes it),
// and a test fails when the file and the routes disagree.
//
//go:embed openapi.json
var openAPIDocument []byte

// OpenAPI returns the OpenAPI 3.1 document of the routes.
func OpenAPI() ([]byte, error) {
	schemas := map[string]any{}
	paths := map[string]map[string]any{}
	pathParam := regexp.MustCompile(`\{([a-z]+)\}`)
	for _, rt := range routes {
		op := map[string]any{
			"summary":     rt.Summary,
			"operationId": operationID(rt),
		}
		if rt.Verb != "" {
			op["description"] = "Needs the verb " + rt.Verb + "."
			op["security"] = []any{map[string]any{"bearer": []any{}}, map[string]any{"mtls": []any{}}}
		}
		var params []any
		for _, m := range pathParam.FindAllStringSubmatch(rt.Path, -1) {
			typ := "string"
			if m[1] == "partition" || m[1] == "offset" {
				typ = "integer"
			}
			params = append(params, map[string]any{"name": m[1], "in": "path", "required": true, "schema": map[string]any{"type": typ}})
		}
		for _, q := range rt.Query {
			typ := "string"
			if q == "limit" || q == "scan" {
				typ = "integer"
			}
			params = append(params, map[string]any{"name": q, "in": "query", "schema": map[string]any{"type": typ}})
		}
		if params != nil {
			op["parameters"] = params
		}
		if rt.Body != nil {
			op["requestBody"] = map[string]any{"required": true, "content": map[string]any{
				"application/json": map[string]any{"schema": schemaOf(reflect.TypeOf(rt.Body), schemas)}}}
		}
		content := map[string]any{}
		if rt.Response != nil {
			content["application/json"] = map[string]any{"schema": schemaOf(reflect.TypeOf(rt.Response), schemas)}
		}
		if rt.Stream {
			content["text/event-stream"] = map[string]any{"schema": map[string]any{"type": "string",
				"description": "server-sent events: progress, then result or error; a tail sends message events"}}
		}
		op["responses"] = map[string]any{
			"200":     map[string]any{"description": "OK", "content": content},
			"default": map[string]any{"description": "An error", "content": map[string]any{"application/json": map[string]any{"schema": schemaOf(reflect.TypeOf(ErrorBody{}), schemas)}}},
		}
		p := Prefix + rt.Path
		if paths[p] == nil {
			paths[p] = map[string]any{}
		}
		paths[p][strings.ToLower(rt.Method)] = op
	}
	doc := map[string]any{
		"openapi": "3.1.0",
		"info": map[string]any{"title": "ferry admin API", "version": "1",
			"description": "Operate a running ferry: topics, messages, consumer groups, dead letters, replay and the audit log. " +
				"Errors are {error:{code,message},request_id}; every mutating request is audited."},
		"paths": paths,
		"components": map[string]any{
			"schemas": schemas,
			"securitySchemes": map[string]any{
				"bearer": map[string]any{"type": "http", "scheme": "bearer"},
				"mtls":   map[string]any{"type": "mutualTLS"},
			},
		},
	}
	out, err := json.MarshalIndent(doc, "", "  ")
	return append(out, '\n'), err
}

// operationID names a route: its method and its path's words.
func operationID(rt route) string {
	var b strings.Builder
	b.WriteString(strings.ToLower(rt.Method))
	for _, part := range strings.Split(rt.Path, "/") {
		part = strings.Trim(part, "{}")
		if part == "" {
			continue
		}
		b.WriteString(strings.ToUpper(part[:1]) + part[1:])
	}
	return b.String()
}

var timeType = reflect.TypeOf(time.Time{})

// schemaOf returns the JSON schema of t, adding named structs to schemas.
func schemaOf(t reflect.Type, schemas map[string]any) map[string]any {
	switch {
	case t == timeType:
		return map[string]any{"type": "string", "format": "date-time"}
	case t.Kind() == reflect.Pointer:
		return schemaOf(t.Elem(), schemas)
	case t.Kind() == reflect.Slice:
		return map[string]any{"type": "array", "items": schemaOf(t.Elem(), schemas)}
	case t.Kind() == reflect.Map:
		return map[string]any{"type": "object", "additionalProperties": schemaOf(t.Elem(), schemas)}
	case t.Kind() == reflect.String:
		return map[string]any{"type": "string"}
	case t.Kind() == reflect.Bool:
		return map[string]any{"type": "boolean"}
	case t.Kind() == reflect.Float32 || t.Kind() == reflect.Float64:
		return map[string]any{"type": "number"}
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Uint64:
		return map[string]any{"type": "integer"}
	case t.Kind() == reflect.Struct:
		ref := map[string]any{"$ref": "#/components/schemas/" + t.Name()}
		if _, ok := schemas[t.Name()]; ok {
			return ref
		}
		schemas[t.Name()] = nil // a placeholder against recursion
		props := map[string]any{}
		var required []string
		for i := range t.NumField() {
			f := t.Field(i)
			tag := f.Tag.Get("json")
			name, opts, _ := strings.Cut(tag, ",")
			if !f.IsExported() || name == "-" {
				continue
			}
			if name == "" {
				name = f.Name
			}
			props[name] = schemaOf(f.Type, schemas)
			if !strings.Contains(opts, "omitempty") && f.Type.Kind() != reflect.Pointer {
				required = append(required, name)
			}
		}
		sort.Strings(required)
		s := map[string]any{"type": "object", "properties": props, "additionalProperties": false}
		if required != nil {
			s["required"] = required
		}
		schemas[t.Name()] = s
		return ref
	}
	return map[string]any{}
}
