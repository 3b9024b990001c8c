//! The read model on PostgreSQL: the same lifecycle as on SQLite.

mod common;

use common::Api;

#[tokio::test]
async fn the_read_model_follows_a_job_on_postgresql() {
    let url = std::env::var("FERRY_TEST_POSTGRES").expect(
        "FERRY_TEST_POSTGRES is not set: run ./scripts/test.sh (or `source scripts/services.sh && services_up`), \
         which starts PostgreSQL and sets it",
    );
    let api = Api::start_with(|c| c.db_url = url).await;
    common::follow_a_job_through_its_lifecycle(&api).await;
    api.stop().await;
}
