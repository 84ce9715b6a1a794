package leveret

import (
	"context"
	"errors"
	"fmt"
	"sync"

	amqp "github.com/rabbitmq/amqp091-go"
)

// ErrNotConfirmed is returned when the broker nacked a publish, returned it as
// unroutable, or the channel closed before the confirm arrived.
var ErrNotConfirmed = errors.New("publish not confirmed")

// ErrUnroutable is returned when the broker returned a publish: no queue is
// bound for its exchange and routing key. It is an ErrNotConfirmed too.
var ErrUnroutable = fmt.Errorf("%w: returned as unroutable", ErrNotConfirmed)

// ErrNacked is returned when the broker nacked a publish. It is an
// ErrNotConfirmed too.
var ErrNacked = fmt.Errorf("%w: the broker nacked it", ErrNotConfirmed)

// confirmer publishes on a channel in confirm mode, mandatory, and tells each
// caller whether its own message was confirmed. Many goroutines may publish at
// once: their confirms are pipelined, and a basic.return (which the broker
// sends before the ack of the same message) marks the oldest outstanding
// publish with the same message id, exchange and routing key.
//
// A nack renews the channel: from then on publishes go through a new one, and
// the nacked one closes once the confirms it still owes have come. RabbitMQ
// before 3.12.5 keeps nacking on a channel whose quorum-queue client learned a
// queue's members while the queue's record still named a stopped node as its
// leader; a new channel learns them afresh (docs/cluster.md). Nacks for other
// reasons (a queue at its length limit) cost one channel opening each.
type confirmer struct {
	conn *amqp.Connection
	log  *Logger
	// lost tells when the broker or a lost connection ends the current
	// channel; a channel retired after a nack closes without a word.
	lost chan *amqp.Error

	mu       sync.Mutex // guards every field of every confirmChannel too
	cur      *confirmChannel
	renewing bool
}

// confirmChannel is one channel of a confirmer, current or retired.
type confirmChannel struct {
	c       *confirmer
	ch      *amqp.Channel
	seq     uint64 // delivery tag of the last publish
	pending map[uint64]*outstanding
	closed  error
	retired bool // a nack replaced it: closed once pending is empty
	closing bool

	returns  chan amqp.Return
	confirms chan amqp.Confirmation
}

type outstanding struct {
	messageID, exchange, key string
	returned                 *amqp.Return
	done                     chan error
}

// newConfirmer opens a channel on conn in confirm mode and starts following
// its confirms.
func newConfirmer(conn *amqp.Connection, log *Logger) (*confirmer, error) {
	c := &confirmer{conn: conn, log: log, lost: make(chan *amqp.Error, 1)}
	cc, err := c.open()
	if err != nil {
		return nil, err
	}
	c.cur = cc
	return c, nil
}

// Lost receives once when the current channel closes (the broker closed it, or
// the connection is gone); nil when it closed without an error.
func (c *confirmer) Lost() <-chan *amqp.Error { return c.lost }

// open opens a channel in confirm mode and starts following it.
func (c *confirmer) open() (*confirmChannel, error) {
	ch, err := c.conn.Channel()
	if err != nil {
		return nil, err
	}
	if err := ch.Confirm(false); err != nil {
		_ = ch.Close()
		return nil, err
	}
	cc := &confirmChannel{
		c:        c,
		ch:       ch,
		pending:  map[uint64]*outstanding{},
		returns:  ch.NotifyReturn(make(chan amqp.Return, 64)),
		confirms: ch.NotifyPublish(make(chan amqp.Confirmation, 256)),
	}
	closed := ch.NotifyClose(make(chan *amqp.Error, 1))
	go cc.follow()
	go cc.watch(closed)
	return cc, nil
}

// Publish sends msg with mandatory set and waits for the broker's verdict.
// It returns nil only for an ack of a message that was not returned. After a
// nack (ErrNacked) the next publish goes through a new channel.
func (c *confirmer) Publish(ctx context.Context, exchange, key string, msg amqp.Publishing) error {
	done := make(chan error, 1)
	c.mu.Lock()
	cc := c.cur
	if cc.closed != nil {
		c.mu.Unlock()
		return cc.closed
	}
	// Registered before the publish: its confirm cannot be resolved before the
	// lock is released. The client numbers confirms from 1, one per publish
	// that was sent.
	tag := cc.seq + 1
	cc.pending[tag] = &outstanding{messageID: msg.MessageId, exchange: exchange, key: key, done: done}
	if err := cc.ch.PublishWithContext(ctx, exchange, key, true, false, msg); err != nil {
		delete(cc.pending, tag)
		c.mu.Unlock()
		return fmt.Errorf("%w: %v", ErrNotConfirmed, err)
	}
	cc.seq = tag
	c.mu.Unlock()
	select {
	case err := <-done:
		if errors.Is(err, ErrNacked) {
			c.renew(cc)
		}
		return err
	case <-ctx.Done():
		return fmt.Errorf("%w: %v", ErrNotConfirmed, ctx.Err())
	}
}

// renew opens a new channel in place of nacked, unless another publish already
// did, and retires nacked. If no channel can be opened, nacked stays current
// (a lost connection is told by Lost).
func (c *confirmer) renew(nacked *confirmChannel) {
	c.mu.Lock()
	if c.cur != nacked || c.renewing || nacked.closed != nil {
		c.mu.Unlock()
		return
	}
	c.renewing = true
	c.mu.Unlock()
	// Opened without the lock: the connection's reader may need the followers,
	// which take it, to make room for the channel's open-ok.
	fresh, err := c.open()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.renewing = false
	if err != nil {
		c.log.Warn("worker.channel_renew_failed", "reason", "nack", "error", err)
		return
	}
	c.cur = fresh
	nacked.retired = true
	nacked.closeIfSettled()
	c.log.Info("worker.channel_renewed", "reason", "nack")
}

// closeIfSettled closes a retired channel that owes no confirm. Under c.mu.
func (cc *confirmChannel) closeIfSettled() {
	if !cc.retired || cc.closing || len(cc.pending) > 0 {
		return
	}
	cc.closing = true
	go func() { _ = cc.ch.Close() }()
}

// watch reports the closing of the channel to Lost unless it was retired.
func (cc *confirmChannel) watch(closed <-chan *amqp.Error) {
	e := <-closed
	cc.c.mu.Lock()
	retired := cc.retired
	cc.c.mu.Unlock()
	if retired {
		return
	}
	select {
	case cc.c.lost <- e:
	default:
	}
}

// follow matches returns and confirms to publishes until the channel closes.
func (cc *confirmChannel) follow() {
	for {
		select {
		case r, ok := <-cc.returns:
			if ok {
				cc.markReturned(r)
			} else {
				cc.returns = nil
			}
		case conf, ok := <-cc.confirms:
			if !ok {
				cc.fail(fmt.Errorf("%w: the channel closed", ErrNotConfirmed))
				return
			}
			// A return always precedes the ack of its message, and the client
			// queued it before this confirm: take every queued return first.
			cc.drainReturns()
			cc.resolve(conf)
		}
	}
}

func (cc *confirmChannel) drainReturns() {
	for cc.returns != nil {
		select {
		case r, ok := <-cc.returns:
			if !ok {
				cc.returns = nil
				return
			}
			cc.markReturned(r)
		default:
			return
		}
	}
}

func (cc *confirmChannel) markReturned(r amqp.Return) {
	cc.c.mu.Lock()
	defer cc.c.mu.Unlock()
	var oldest uint64
	for tag, p := range cc.pending {
		if p.returned == nil && p.messageID == r.MessageId && p.exchange == r.Exchange &&
			p.key == r.RoutingKey && (oldest == 0 || tag < oldest) {
			oldest = tag
		}
	}
	if oldest != 0 {
		ret := r
		cc.pending[oldest].returned = &ret
	}
}

func (cc *confirmChannel) resolve(conf amqp.Confirmation) {
	cc.c.mu.Lock()
	p, ok := cc.pending[conf.DeliveryTag]
	delete(cc.pending, conf.DeliveryTag)
	cc.closeIfSettled()
	cc.c.mu.Unlock()
	switch {
	case !ok:
	case !conf.Ack:
		p.done <- ErrNacked
	case p.returned != nil:
		p.done <- fmt.Errorf("%w (%d %s)", ErrUnroutable, p.returned.ReplyCode, p.returned.ReplyText)
	default:
		p.done <- nil
	}
}

func (cc *confirmChannel) fail(err error) {
	cc.c.mu.Lock()
	defer cc.c.mu.Unlock()
	cc.closed = err
	for tag, p := range cc.pending {
		p.done <- err
		delete(cc.pending, tag)
	}
}
