-- check: stdout
-- A GROUP BY on the typed path (one NOT NULL key, COUNT and SUM of NOT NULL BIGINTs), which
-- the state backend's typed aggregates run; the changelog applies to the same table as the
-- general path's would.
SET 'parallelism.default' = '2';

CREATE TABLE orders (id BIGINT NOT NULL, customer STRING NOT NULL, product STRING, quantity INT, price DOUBLE)
  WITH ('connector' = 'filesystem', 'path' = '${DATA}/orders.csv', 'format' = 'csv');
CREATE TABLE per_customer (customer STRING, orders BIGINT, id_sum BIGINT) WITH ('connector' = 'print');

INSERT INTO per_customer SELECT customer, COUNT(*), SUM(id) FROM orders GROUP BY customer;
