-- check: stdout
-- A full outer join: customers without orders and orders without customers come out padded
-- with NULLs; a partner arriving later retracts the padded row (-D) and adds the pair (+I).
-- The check applies the printed changelog.
SET 'parallelism.default' = '2';

CREATE TABLE orders (id BIGINT, customer STRING, product STRING, quantity INT, price DOUBLE)
  WITH ('connector' = 'filesystem', 'path' = '${DATA}/orders.csv', 'format' = 'csv');
CREATE TABLE customers (name STRING, city STRING, tier STRING)
  WITH ('connector' = 'filesystem', 'path' = '${DATA}/customers.csv', 'format' = 'csv');
CREATE TABLE matched (id BIGINT, customer STRING, name STRING, city STRING) WITH ('connector' = 'print');

INSERT INTO matched
SELECT o.id, o.customer, c.name, c.city
FROM orders AS o FULL JOIN customers AS c ON o.customer = c.name;
