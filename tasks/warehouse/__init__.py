"""The PostgreSQL warehouse: connection, schema migrations, transactional loads, binary COPY,
queries. Data flows in one way: the load writes a version of a dataset; everything else reads."""
