//! The archive of finished tasks in PostgreSQL, against a real server of the tests' own
//! (`common/postgres.rs`).

mod common;

use common::Postgres;

#[tokio::test(flavor = "multi_thread")]
async fn the_test_postgres_starts_stops_and_starts_again() {
    let mut pg = Postgres::start();
    assert_eq!(
        pg.query_async("SELECT 1").await,
        [[Some("1".to_owned())]],
        "the url: {}",
        pg.url
    );
    pg.execute_async("CREATE TABLE kept (id int PRIMARY KEY, note text); INSERT INTO kept VALUES (7, 'seven'), (8, NULL)")
        .await;

    // Stopped: nothing answers on its port.
    pg.stop();
    assert!(
        pg.client().await.is_err(),
        "a connect succeeded while stopped"
    );

    // Started again on the same port with the same data; the blocking calls work too.
    pg.start_again();
    assert_eq!(
        pg.query("SELECT id, note FROM kept ORDER BY id"),
        [
            [Some("7".to_owned()), Some("seven".to_owned())],
            [Some("8".to_owned()), None]
        ]
    );

    // Killed (a crash, its processes lingering a moment): it starts again and recovers.
    pg.kill();
    pg.start_again();
    assert_eq!(
        pg.query("SELECT count(*) FROM kept"),
        [[Some("2".to_owned())]]
    );
}
