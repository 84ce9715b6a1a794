// Publishing with confirms and `mandatory`: a publish has succeeded only when
// the broker acked it and did not return it first (docs/contract.md §3).

/** The broker did not take the message. */
export class PublishError extends Error {
  name = "PublishError";
}

/** The broker returned the message: no queue is bound for its exchange and routing key. */
export class Unroutable extends PublishError {
  name = "Unroutable";
}

/** The broker nacked the message, closed the channel before the confirm, or never confirmed it. */
export class NotConfirmed extends PublishError {
  name = "NotConfirmed";
}

/**
 * The broker nacked the message on an open channel: it did not take it, and
 * may take it if sent again (RabbitMQ 3.10/3.11 can keep nacking on one
 * channel while a new channel's publishes go through). Its name stays
 * NotConfirmed: what the Publisher's callers see does not change.
 */
export class Nacked extends NotConfirmed {}

/** The exchange does not exist (404): run `leveret topology apply`. */
export class ExchangeMissing extends PublishError {
  name = "ExchangeMissing";
}

/** The user may not publish to the exchange (403). */
export class AccessRefused extends PublishError {
  name = "AccessRefused";
}

/**
 * The channel or its connection closed before the confirm, and the broker
 * gave no reason: it may or may not have the message. Publishing it again
 * with the same message id is safe (a duplicate is possible, a loss is not).
 */
export class ChannelLost extends PublishError {
  name = "ChannelLost";
}

/**
 * Wraps an amqplib ConfirmChannel. RabbitMQ sends a `basic.return` before the
 * `basic.ack` of the same publish, so a return marks the pending publishes it
 * matches (same exchange, routing key and message id) and their acks then
 * count as failures. Should two pending publishes share all three, both are
 * marked: a failure reported in excess is safe (the delivery is rejected to
 * the dead-letter exchange), a return missed would lose a message.
 *
 * Publishes are pipelined: any number may wait for their confirms at once.
 */
export class ConfirmPublisher {
  #channel;
  #pending = new Set();
  #closed = false;
  #brokerError = null;

  constructor(channel) {
    this.#channel = channel;
    channel.on("return", (msg) => {
      const key = keyOf(msg.fields.exchange, msg.fields.routingKey, msg.properties.messageId);
      for (const entry of this.#pending) if (entry.key === key) entry.returned = true;
    });
    // A channel.close from the broker: 'error' comes first, then 'close'.
    channel.on("error", (err) => {
      this.#brokerError ??= err;
    });
    // amqplib fails the unconfirmed publishes from its own 'close' listener;
    // this one runs before it, so they are told apart from nacks.
    channel.prependListener("close", () => {
      this.#closed = true;
    });
  }

  /** True once the channel has closed, for whatever reason. */
  get closed() {
    return this.#closed;
  }

  /**
   * Publish and wait for the confirm. Rejects with Unroutable, NotConfirmed
   * (Nacked for a nack), ExchangeMissing, AccessRefused or ChannelLost (all
   * PublishErrors).
   */
  publish(exchange, routingKey, body, options) {
    return new Promise((resolve, reject) => {
      const messageId = options.messageId ?? "(no id)";
      const entry = { key: keyOf(exchange, routingKey, options.messageId), returned: false };
      this.#pending.add(entry);
      const settle = (err) => {
        this.#pending.delete(entry);
        if (err) reject(this.#failure(exchange, messageId));
        else if (entry.returned) {
          const type = options.type ? ` (${options.type})` : "";
          reject(
            new Unroutable(
              `message ${messageId}${type} is unroutable: no queue is bound to exchange '${exchange}' with routing key '${routingKey}'`,
            ),
          );
        } else resolve();
      };
      try {
        // The callback runs on ack (err null), nack, or the channel closing.
        this.#channel.publish(exchange, routingKey, body, { ...options, mandatory: true }, settle);
      } catch (err) {
        // Nothing was sent: the channel is closed, or amqplib cannot encode the
        // properties (a header table over 64 KiB, a short string over 255 bytes).
        this.#pending.delete(entry);
        reject(
          this.#closed
            ? new ChannelLost(`message ${messageId} not sent: the channel is closed`)
            : new PublishError(`message ${messageId} not sent: ${err?.message ?? err}`),
        );
      }
    });
  }

  #failure(exchange, messageId) {
    if (!this.#closed) return new Nacked(`the broker nacked message ${messageId}`);
    const cause = this.#brokerError;
    if (!cause) return new ChannelLost(`the connection closed before the broker confirmed message ${messageId}`);
    const text = String(cause.message ?? cause).replace(/^Channel closed by server: /, "");
    // A 404 names the exchange it is about; another publish on the same
    // channel may have caused it.
    if (cause.code === 404 && text.includes(`exchange '${exchange}'`)) {
      return new ExchangeMissing(`exchange '${exchange}' does not exist; run \`leveret topology apply\` (${text})`);
    }
    if (cause.code === 403) {
      return new AccessRefused(`the broker refused message ${messageId} on exchange '${exchange}': ${text}`);
    }
    const err = new NotConfirmed(`the broker closed the channel before confirming message ${messageId}: ${text}`);
    err.code = cause.code;
    return err;
  }
}

const keyOf = (exchange, routingKey, messageId) => `${exchange}\u0000${routingKey}\u0000${messageId ?? ""}`;
