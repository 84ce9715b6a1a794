package leveret_test

// A copy the broker nacks is sent again, on a new channel, for a while before
// the delivery is dead-lettered. The broker is made to nack every publish to
// a retry tier with a max-length 0, reject-publish policy, which needs
// rabbitmqctl on this machine and classic queues (a quorum queue with a
// declared x-overflow ignores the policy).

import (
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// refuse makes the broker nack every publish to queue until the returned
// function (also a cleanup of t) clears the policy.
func (b *broker) refuse(queue string) (clear func()) {
	b.t.Helper()
	ctl, err := exec.LookPath("rabbitmqctl")
	if err != nil || !strings.Contains(brokerURL(), "127.0.0.1") && !strings.Contains(brokerURL(), "localhost") {
		b.t.Skip("needs rabbitmqctl for a local broker")
	}
	name := "leveret-gotest-refuse-" + strconv.Itoa(os.Getpid()) + "-" + strconv.FormatInt(time.Now().UnixNano(), 10)
	out, err := exec.Command(ctl, "-q", "set_policy", name, "^"+regexp.QuoteMeta(queue)+"$",
		`{"max-length": 0, "overflow": "reject-publish"}`, "--priority", "999", "--apply-to", "queues").CombinedOutput()
	if err != nil {
		b.t.Skipf("rabbitmqctl cannot set a policy: %v\n%s", err, out)
	}
	cleared := false
	clear = func() {
		if cleared {
			return
		}
		cleared = true
		if out, err := exec.Command(ctl, "-q", "clear_policy", name).CombinedOutput(); err != nil {
			b.t.Errorf("clear_policy %s: %v\n%s", name, err, out)
		}
	}
	b.t.Cleanup(clear)
	return clear
}

// unacked is how many of queue's messages are delivered and not yet settled.
func (b *broker) unacked(queue string) int {
	b.t.Helper()
	out, err := exec.Command("rabbitmqctl", "-q", "list_queues", "name", "messages_unacknowledged").CombinedOutput()
	if err != nil {
		b.t.Fatalf("list_queues: %v\n%s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == queue {
			n, err := strconv.Atoi(f[1])
			b.must(err)
			return n
		}
	}
	b.t.Fatalf("queue %s not listed:\n%s", queue, out)
	return 0
}

// logLines is every JSON line of event for a message id.
func logLines(logs *syncBuffer, event, id string) int {
	n := 0
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, `"event":"`+event+`"`) && strings.Contains(line, `"message_id":"`+id+`"`) {
			n++
		}
	}
	return n
}

// A retry copy the first tier refuses is sent again, the delivery unacked and
// nothing dead-lettered meanwhile; once the tier takes it, attempt 2 runs.
func TestIntegrationRefusedCopyIsSentAgain(t *testing.T) {
	b := dial(t)
	q := uniqueQueue("refused")
	b.declare(topology{queue: q, deadLetter: q + ".dead", bindDLQ: true, classic: true})
	clear := b.refuse(q + ".retry.1")
	w := b.startWorker(q)

	id := b.task(q, map[string]interface{}{"fail_times": 1})
	var refused map[string]interface{}
	b.eventually(func() bool { refused = logLine(w.logs, "message.republish_refused", id); return refused != nil },
		"the refusal in the log")
	if refused["level"] != "warning" || refused["exchange"] != q+".retry" {
		t.Errorf("refused line %v", refused)
	}
	if s, ok := refused["sending_again_for"].(float64); !ok || s < 29 || s > 30 {
		t.Errorf("sending_again_for %#v, want about 30", refused["sending_again_for"])
	}
	// Some resends later (50, 100, 200, 400, 800 ms), still held.
	time.Sleep(2 * time.Second)
	if n := b.unacked(q); n != 1 {
		t.Errorf("%d unacked deliveries in Q while refused, want 1", n)
	}
	if n := b.inspect(q + ".dlq").Messages; n != 0 {
		t.Errorf("%d messages dead-lettered while refused", n)
	}
	if n := logLines(w.logs, "message.republish_refused", id); n != 1 {
		t.Errorf("%d refusal lines, want 1", n)
	}
	for _, event := range []string{"message.republish_failed", "message.retry_scheduled", "message.dead_lettered"} {
		if logLine(w.logs, event, id) != nil {
			t.Errorf("%s while refused", event)
		}
	}
	if !strings.Contains(w.logs.String(), `"event":"worker.channel_renewed"`) {
		t.Error("no channel renewed after the nacks")
	}

	clear()
	r, _ := b.receipt(q, id)
	if r.Attempt != 2 {
		t.Errorf("receipt %+v, want attempt 2", r)
	}
	b.eventually(func() bool { return logLine(w.logs, "message.retry_scheduled", id) != nil }, "the retry scheduled")
	if n := b.inspect(q + ".dlq").Messages; n != 0 {
		t.Errorf("%d messages in the DLQ", n)
	}
	if n := logLines(w.logs, "message.republish_refused", id); n != 1 {
		t.Errorf("%d refusal lines, want 1", n)
	}
	// Retiring a nacked channel is not losing the connection.
	if strings.Contains(w.logs.String(), `"event":"worker.connection_lost"`) {
		t.Errorf("a retired channel looked like a lost connection:\n%s", w.logs.String())
	}
}

// A copy still refused when the patience runs out: the delivery is rejected
// and Q's dead-letter exchange takes it.
func TestIntegrationRefusedCopyIsDeadLettered(t *testing.T) {
	b := dial(t)
	q := uniqueQueue("refusedlong")
	b.declare(topology{queue: q, deadLetter: q + ".dead", bindDLQ: true, classic: true})
	b.refuse(q + ".retry.1")
	w := b.startWorkerEnv(q, map[string]string{"LEVERET_REPUBLISH_PATIENCE": "1"})

	start := time.Now()
	id := b.task(q, map[string]interface{}{"fail_times": 1})
	d := b.deadLetter(q+".dlq", id)
	if took := time.Since(start); took < 500*time.Millisecond {
		t.Errorf("dead-lettered after %s: not sent again", took)
	}
	deaths, _ := d.Headers["x-death"].([]interface{})
	if len(deaths) == 0 {
		t.Fatalf("x-death %#v", d.Headers["x-death"])
	}
	death, _ := deaths[0].(amqp.Table)
	if death["reason"] != "rejected" || death["queue"] != q {
		t.Errorf("x-death %v, want rejected from %s", death, q)
	}
	var failed map[string]interface{}
	b.eventually(func() bool { failed = logLine(w.logs, "message.republish_failed", id); return failed != nil },
		"the republish failure in the log")
	if s, ok := failed["refused_for"].(float64); !ok || s < 0.5 || s > 2 {
		t.Errorf("refused_for %#v, want about 1", failed["refused_for"])
	}
	if !strings.Contains(failed["error"].(string), "nacked") {
		t.Errorf("failed line %v", failed)
	}
	if n := logLines(w.logs, "message.republish_refused", id); n != 1 {
		t.Errorf("%d refusal lines, want 1", n)
	}
	b.eventually(func() bool { return logLine(w.logs, "message.dead_lettered", id) != nil }, "the outcome line")
	if n := b.inspect(q).Messages; n != 0 {
		t.Errorf("%d messages left in Q: the delivery was requeued", n)
	}
	if n := b.unacked(q); n != 0 {
		t.Errorf("%d deliveries left unacked", n)
	}
}
