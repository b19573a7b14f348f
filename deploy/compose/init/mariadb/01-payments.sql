-- The example schema of source `payments` (deploy/compose/cdc.yaml), created on the first start
-- of the compose stack's MariaDB (docker-entrypoint-initdb.d, in the database MARIADB_DATABASE).
CREATE TABLE payments (
    id              bigint PRIMARY KEY,
    subscription_id bigint NOT NULL,
    amount          decimal(12,2) NOT NULL,
    status          varchar(20) NOT NULL,
    paid_at         datetime(6) NOT NULL
);

INSERT INTO payments VALUES
    (1, 1, 9.99, 'paid', '2026-05-01 10:00:00'),
    (2, 2, 29.00, 'paid', '2026-05-01 10:05:00');
