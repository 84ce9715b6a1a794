package leveret

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/xeipuuv/gojsonschema"
)

// Schemas loads and caches the draft-07 schema files of a schemas/ directory,
// one per type and version: <dir>/<type>.v<version>.json.
type Schemas struct {
	dir   string
	mu    sync.Mutex
	cache map[string]*gojsonschema.Schema
}

// NewSchemas reads schemas from dir.
func NewSchemas(dir string) *Schemas {
	return &Schemas{dir: dir, cache: map[string]*gojsonschema.Schema{}}
}

// Dir is the directory the schemas are read from.
func (s *Schemas) Dir() string { return s.dir }

// Load compiles the schema of one type and version (once), checking that the
// file's x-leveret-type and x-leveret-version annotations name it.
func (s *Schemas) Load(msgType string, version int64) (*gojsonschema.Schema, error) {
	if msgType == "" || strings.ContainsAny(msgType, `/\`) || strings.Contains(msgType, "..") {
		return nil, fmt.Errorf("no schema for type %q", msgType)
	}
	key := fmt.Sprintf("%s.v%d", msgType, version)
	s.mu.Lock()
	defer s.mu.Unlock()
	if schema, ok := s.cache[key]; ok {
		return schema, nil
	}
	path := filepath.Join(s.dir, key+".json")
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("no schema for %s v%d: %w", msgType, version, err)
	}
	var notes struct {
		Type    string `json:"x-leveret-type"`
		Version int64  `json:"x-leveret-version"`
	}
	if err := json.Unmarshal(data, &notes); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if notes.Type != msgType || notes.Version != version {
		return nil, fmt.Errorf("%s: annotated as %s v%d, expected %s v%d",
			path, notes.Type, notes.Version, msgType, version)
	}
	loader := gojsonschema.NewSchemaLoader()
	loader.Draft = gojsonschema.Draft7
	loader.AutoDetect = false
	schema, err := loader.Compile(gojsonschema.NewBytesLoader(data))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	s.cache[key] = schema
	return schema, nil
}

// Validate checks a JSON document (already known to be well-formed UTF-8 JSON)
// against the schema of its type and version. The error lists the violations.
func (s *Schemas) Validate(msgType string, version int64, doc []byte) error {
	schema, err := s.Load(msgType, version)
	if err != nil {
		return err
	}
	result, err := schema.Validate(gojsonschema.NewBytesLoader(doc))
	if err != nil {
		return err
	}
	if result.Valid() {
		return nil
	}
	problems := make([]string, 0, len(result.Errors()))
	for _, e := range result.Errors() {
		problems = append(problems, e.String())
	}
	return fmt.Errorf("%s v%d: %s", msgType, version, strings.Join(problems, "; "))
}
