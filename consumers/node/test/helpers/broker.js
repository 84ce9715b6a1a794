// The broker the integration tests use: LEVERET_TEST_URL, else the local one.
//
// A URL without credentials logs in as RabbitMQ's default user, as amqplib
// does; the login is written into the URL so that the tests checking that no
// output shows the password check a real one.

const LOCAL = "amqp://127.0.0.1:5672/";
const DEFAULT_LOGIN = ["guest", "guest"]; // RabbitMQ's default user, amqplib's default login

export function withLogin(raw) {
  const url = new URL(raw);
  if (url.username) return raw;
  [url.username, url.password] = DEFAULT_LOGIN;
  return url.toString();
}

export const BROKER_URL = withLogin(process.env.LEVERET_TEST_URL || LOCAL);
