-- The example schema of source `billing` (deploy/compose/cdc.yaml), created on the first start of
-- the compose stack's PostgreSQL (docker-entrypoint-initdb.d). Debezium Server creates its
-- publication and replication slot itself.
CREATE TABLE public.customers (
    id         bigint PRIMARY KEY,
    email      text NOT NULL,
    country    text,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE public.subscriptions (
    id          bigint PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES public.customers (id),
    plan        text NOT NULL,
    status      text NOT NULL,
    amount      numeric(12,2) NOT NULL,
    renews_at   timestamptz
);

INSERT INTO public.customers (id, email, country) VALUES
    (1, 'ada@example.com', 'GB'),
    (2, 'grace@example.com', 'US');

INSERT INTO public.subscriptions (id, customer_id, plan, status, amount, renews_at) VALUES
    (1, 1, 'basic', 'active', 9.99, now() + interval '30 days'),
    (2, 2, 'pro', 'active', 29.00, now() + interval '30 days');
