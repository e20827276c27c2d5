//! Statements that give every PoWA datasource something to copy.

/// SQL that creates a small table and runs `statements` statements of
/// distinct shapes on it. pg_stat_statements normalises constants away, so
/// the shapes differ by the number of selected columns and by the length of
/// an IN list; each statement also filters on columns, for pg_qualstats.
/// `comment_bytes` pads each statement with a comment (kept in the query
/// text), to make large datasources.
pub fn workload_sql(statements: usize, comment_bytes: usize) -> String {
    let mut sql = String::from(
        "CREATE TABLE IF NOT EXISTS powa_fleet_workload(id int PRIMARY KEY, val int, label text);\n\
         INSERT INTO powa_fleet_workload SELECT i, i % 100, 'l' || (i % 10) \
         FROM generate_series(1, 2000) i ON CONFLICT DO NOTHING;\n\
         ANALYZE powa_fleet_workload;\n\
         CREATE OR REPLACE FUNCTION powa_fleet_double(int) RETURNS int \
         LANGUAGE plpgsql AS 'BEGIN RETURN $1 * 2; END';\n\
         SELECT powa_fleet_double(21);\n",
    );
    let padding = "x".repeat(comment_bytes);
    const COLUMNS: usize = 40;
    for i in 0..statements {
        let columns = i % COLUMNS + 1;
        let in_list = i / COLUMNS + 1;
        let select: Vec<&str> = std::iter::repeat_n("val", columns).collect();
        let ids: Vec<String> = (1..=in_list).map(|k| k.to_string()).collect();
        if comment_bytes > 0 {
            sql.push_str(&format!("/* {i} {padding} */ "));
        }
        sql.push_str(&format!(
            "SELECT {} FROM powa_fleet_workload WHERE id IN ({}) AND val = {} AND label = 'l{}';\n",
            select.join(", "),
            ids.join(","),
            i % 100,
            i % 10
        ));
    }
    sql
}

/// A second database of a remote server (beside `powa`).
pub const SECOND_DATABASE: &str = "powa_fleet_other";

/// SQL for [`SECOND_DATABASE`]: a table with a primary key, a function,
/// and statements on them, so that each PoWA 5 per-database datasource
/// (tables, indexes, functions) and catalog has rows of its own there.
pub fn second_database_sql() -> String {
    "CREATE TABLE powa_fleet_other(id int PRIMARY KEY, note text);\n\
     INSERT INTO powa_fleet_other SELECT i, 'n' || i FROM generate_series(1, 300) i;\n\
     ANALYZE powa_fleet_other;\n\
     CREATE FUNCTION powa_fleet_triple(int) RETURNS int \
     LANGUAGE plpgsql AS 'BEGIN RETURN $1 * 3; END';\n\
     SELECT powa_fleet_triple(id) FROM powa_fleet_other WHERE id <= 5;\n\
     SELECT note FROM powa_fleet_other WHERE id = 7;\n"
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_are_distinct() {
        let sql = workload_sql(100, 0);
        let statements: Vec<&str> = sql
            .lines()
            .filter(|l| l.starts_with("SELECT val"))
            .collect();
        assert_eq!(statements.len(), 100);
        // Two statements share a shape only if both column count and IN
        // length match, which the generator never repeats.
        let shapes: std::collections::HashSet<(usize, usize)> = statements
            .iter()
            .map(|s| (s.matches("val,").count(), s.matches(',').count()))
            .collect();
        assert_eq!(shapes.len(), 100);
    }
}
