package leveret

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func env(vars map[string]string) func(string) string {
	return func(k string) string { return vars[k] }
}

func TestConfigDefaults(t *testing.T) {
	cfg, err := ConfigFromEnv(env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.URLs) != 1 || cfg.URLs[0] != DefaultURL || cfg.Queue != "leveret.demo.tasks" ||
		cfg.Prefetch != 8 || cfg.Schemas != "" || cfg.MaxSize != 1<<20 {
		t.Errorf("defaults %+v", cfg)
	}
	if cfg.Broker() != "amqp://localhost:5672/" { // no credentials to hide
		t.Errorf("Broker() = %q", cfg.Broker())
	}
}

func TestConfigFromEnv(t *testing.T) {
	cfg, err := ConfigFromEnv(env(map[string]string{
		"LEVERET_URL":          "amqp://u:s3cret@a:5672/, amqps://u:s3cret@b:5671/vh",
		"LEVERET_QUEUE":        "my.queue",
		"LEVERET_SCHEMAS":      "/srv/schemas",
		"LEVERET_PREFETCH":     "32",
		"LEVERET_MAX_ATTEMPTS": "3",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.URLs) != 2 || cfg.Queue != "my.queue" || cfg.Schemas != "/srv/schemas" || cfg.Prefetch != 32 ||
		cfg.MaxAttempts != 3 {
		t.Errorf("config %+v", cfg)
	}
	if strings.Contains(cfg.Broker(), "s3cret") {
		t.Errorf("Broker() shows the password: %q", cfg.Broker())
	}
	if got := cfg.redact("dial tcp: s3cret went wrong"); strings.Contains(got, "s3cret") {
		t.Errorf("redact kept the password: %q", got)
	}
	for _, bad := range []map[string]string{
		{"LEVERET_PREFETCH": "0"},
		{"LEVERET_PREFETCH": "many"},
		{"LEVERET_MAX_ATTEMPTS": "0"},
		{"LEVERET_MAX_ATTEMPTS": "three"},
		{"LEVERET_URL": "http://u:s3cret@host/"},
	} {
		_, err := ConfigFromEnv(env(bad))
		if err == nil {
			t.Errorf("%v accepted", bad)
		} else if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("the error shows the password: %v", err)
		}
	}
}

func TestRedact(t *testing.T) {
	in := "failed: amqp://user:p%40ss@host:5672/ and amqps://x:y@z/"
	want := "failed: amqp://user:***@host:5672/ and amqps://x:***@z/"
	if got := Redact(in); got != want {
		t.Errorf("Redact = %q", got)
	}
	if got := Redact("amqp://host:5672/"); got != "amqp://host:5672/" {
		t.Errorf("a URL with no password changed: %q", got)
	}
}

func TestLoggerWritesOneJSONObjectPerLine(t *testing.T) {
	var buf bytes.Buffer
	log := NewLogger(&buf)
	log.Info("message.processed", "message_id", "m", "attempt", int64(2), "error", errTest("bad\nline"))
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if len(lines) != 1 {
		t.Fatalf("%d lines", len(lines))
	}
	var rec map[string]interface{}
	if err := json.Unmarshal([]byte(lines[0]), &rec); err != nil {
		t.Fatal(err)
	}
	if rec["event"] != "message.processed" || rec["level"] != "info" || rec["attempt"] != 2.0 ||
		rec["error"] != "bad\nline" || rec["ts"] == nil {
		t.Errorf("record %v", rec)
	}
	if !strings.HasPrefix(lines[0], `{"ts":`) {
		t.Errorf("ts first: %s", lines[0])
	}
}

type errTest string

func (e errTest) Error() string { return string(e) }

func TestConfigProbeSettings(t *testing.T) {
	cfg, err := ConfigFromEnv(env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.HTTPPort != -1 || cfg.HTTPHost != "127.0.0.1" || cfg.StallAfter != 300*time.Second ||
		cfg.CheckInterval != 5*time.Second || cfg.HealthFile != "" {
		t.Errorf("defaults %+v", cfg)
	}
	cfg, err = ConfigFromEnv(env(map[string]string{
		"LEVERET_HTTP_PORT":      "9100",
		"LEVERET_HTTP_HOST":      "0.0.0.0",
		"LEVERET_STALL_AFTER":    "2.5",
		"LEVERET_CHECK_INTERVAL": "0.2",
		"LEVERET_HEALTH_FILE":    "/tmp/live",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.HTTPPort != 9100 || cfg.HTTPHost != "0.0.0.0" || cfg.StallAfter != 2500*time.Millisecond ||
		cfg.CheckInterval != 200*time.Millisecond || cfg.HealthFile != "/tmp/live" {
		t.Errorf("from the environment %+v", cfg)
	}
	for name, value := range map[string]string{
		"LEVERET_HTTP_PORT":      "http",
		"LEVERET_STALL_AFTER":    "0",
		"LEVERET_CHECK_INTERVAL": "soon",
	} {
		if _, err := ConfigFromEnv(env(map[string]string{name: value})); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s=%s: %v", name, value, err)
		}
	}
}

func TestConfigRepublishPatience(t *testing.T) {
	cfg, err := ConfigFromEnv(env(nil))
	if err != nil || cfg.RepublishPatience != 30*time.Second {
		t.Fatalf("default %v, %v", cfg.RepublishPatience, err)
	}
	cfg, err = ConfigFromEnv(env(map[string]string{"LEVERET_REPUBLISH_PATIENCE": "1.5"}))
	if err != nil || cfg.RepublishPatience != 1500*time.Millisecond {
		t.Fatalf("from the environment %v, %v", cfg.RepublishPatience, err)
	}
	if _, err := ConfigFromEnv(env(map[string]string{"LEVERET_REPUBLISH_PATIENCE": "-1"})); err == nil ||
		!strings.Contains(err.Error(), "LEVERET_REPUBLISH_PATIENCE") {
		t.Errorf("a negative patience: %v", err)
	}
}
