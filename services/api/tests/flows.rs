//! Deployed flows through the api: `POST /flows` and the registry requests of `POST /events`
//! are checked and published on intake, and `GET /flows` lists what the planner's
//! `flow.deployed` / `flow.undeployed` events say, never going back to an older version.

mod common;

use common::{Api, eventually};
use ferry_event::payload::{FlowDeployed, FlowUndeployed};
use ferry_event::{AttributesReader, EventBuilder, kind};
use serde_json::{Value, json};

const FLOW: &str = "id: ingest
namespace: team
inputs:
  day: { type: string, required: true }
triggers:
  - on: { type: com.acme.file.uploaded, source: 's3://landing/*' }
    inputs: { day: '{{ event.data.day }}' }
tasks:
  - id: load
    runner: local
    command: [echo, '{{ inputs.day }}']
";

async fn post_flow(api: &Api, token: Option<&str>, body: &Value) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(api.url("/flows"))
        .header("content-type", "application/json")
        .body(body.to_string());
    req = req.bearer_auth(token.unwrap_or(&api.admin_token));
    let r = req.send().await.expect("POST answers");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_deploy_is_checked_and_published_on_intake() {
    let mut api = Api::start().await;
    let (status, body) = post_flow(&api, None, &json!({"flow": FLOW, "flowName": "ingest.yaml"})).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["flow"], "team/ingest");
    let event = api.published().await;
    assert_eq!(event.ty(), kind::FLOW_DEPLOY);
    assert_eq!(event.subject(), Some("team/ingest"));
    assert_eq!(event.id(), body["id"].as_str().unwrap());

    // An invalid flow: every problem, nothing published.
    let bad = FLOW.replace("inputs: { day:", "inputs: { dya:");
    let (status, body) = post_flow(&api, None, &json!({"flow": bad})).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.to_string().contains("which the flow does not declare"),
        "{body}"
    );
    api.published_nothing().await;

    // Only a token that may submit in the flow's namespace may deploy it.
    let reader = api.add_token("reader", &["read"], None).await;
    let (status, _) = post_flow(&api, Some(&reader), &json!({"flow": FLOW})).await;
    assert_eq!(status, 403);
    let other = api.add_token("other-team", &["submit"], Some(&["other"])).await;
    let (status, body) = post_flow(&api, Some(&other), &json!({"flow": FLOW})).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("namespace `team`"),
        "{body}"
    );
    let undeploy = json!({
        "specversion": "1.0", "id": "u-1", "source": "/ci", "type": kind::FLOW_UNDEPLOY,
        "data": {"namespace": "team", "flowId": "ingest"}
    });
    let r = reqwest::Client::new()
        .post(api.url("/events"))
        .bearer_auth(&other)
        .header("content-type", "application/cloudevents+json")
        .body(undeploy.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    api.published_nothing().await;

    // The admin's undeploy goes to intake, named by the flow.
    let r = api
        .http
        .post(api.url("/events"))
        .header("content-type", "application/cloudevents+json")
        .body(undeploy.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let event = api.published().await;
    assert_eq!(
        (event.ty(), event.subject()),
        (kind::FLOW_UNDEPLOY, Some("team/ingest"))
    );
    api.stop().await;
}

#[tokio::test]
async fn the_flows_listed_follow_the_registry_and_never_go_back() {
    let api = Api::start().await;
    let planner = EventBuilder::new("ferry/planner/test");
    let deployed = |version: u64| {
        planner.flow(
            kind::FLOW_DEPLOYED,
            "team/ingest",
            &FlowDeployed {
                namespace: Some("team".into()),
                flow_id: "ingest".into(),
                version,
                triggers: vec![json!({"on": {"type": format!("com.acme.v{version}")}})],
                deployed_at_ms: 1000 + version as i64,
            },
        )
    };
    let undeployed = |version: u64| {
        planner.flow(
            kind::FLOW_UNDEPLOYED,
            "team/ingest",
            &FlowUndeployed {
                namespace: Some("team".into()),
                flow_id: "ingest".into(),
                version,
                undeployed_at_ms: 2000,
            },
        )
    };
    let listed = |want: Option<u64>| {
        let api = &api;
        async move {
            eventually(&format!("GET /flows shows version {want:?}"), || async {
                let (status, body) = api.get("/flows").await;
                let flows = body["flows"].as_array().cloned().unwrap_or_default();
                let version = flows.first().and_then(|f| f["version"].as_u64());
                (status == 200 && version == want && flows.len() <= 1).then_some(body)
            })
            .await
        }
    };
    api.publish(&[deployed(1)]).await;
    let body = listed(Some(1)).await;
    assert_eq!(body["flows"][0]["flowId"], "ingest");
    assert_eq!(body["flows"][0]["namespace"], "team");
    assert_eq!(body["flows"][0]["triggers"][0]["on"]["type"], "com.acme.v1");
    // A newer version replaces it; a late older one changes nothing.
    api.publish(&[deployed(3), deployed(2)]).await;
    listed(Some(3)).await;
    // Undeployed; its deploy delivered again (a redelivery, or the planner publishing a
    // recorded outcome again) does not bring it back.
    api.publish(&[undeployed(3), deployed(3)]).await;
    listed(None).await;
    api.publish(&[deployed(4)]).await;
    listed(Some(4)).await;

    // A token limited to other namespaces does not see it.
    let other = api.add_token("other-team", &["read"], Some(&["other"])).await;
    let (status, body) = api.get_as(Some(&other), "/flows").await;
    assert_eq!(status, 200);
    assert_eq!(body["flows"], json!([]), "{body}");
    api.stop().await;
}
