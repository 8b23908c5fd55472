//! `dns`: ndots and single-request-reopen.

use super::*;

#[test]
fn dns_adds_ndots_2_as_a_string_and_single_request_reopen() {
    let mut h = Harness::new(&only("dns"));
    let wanted = json!([{"name": "ndots", "value": "2"}, {"name": "single-request-reopen"}]);

    // dnsConfig missing: one add of the whole dnsConfig.
    let pod = plain_pod(json!({}));
    let out = h.pod("dns-missing", "team-a", &pod);
    assert_eq!(out.object["spec"]["dnsConfig"], json!({"options": wanted}));
    assert!(out.object["spec"]["dnsConfig"]["options"][0]["value"].is_string());
    assert_eq!(out.policies, vec!["dns"]);
    assert_eq!(out.patch.len(), 1);

    // dnsConfig present without options: nameservers and searches kept.
    let pod =
        plain_pod(json!({"dnsConfig": {"nameservers": ["192.0.2.1"], "searches": ["a.example"]}}));
    let out = h.pod("dns-no-options", "team-a", &pod);
    assert_eq!(
        out.object["spec"]["dnsConfig"],
        json!({"nameservers": ["192.0.2.1"], "searches": ["a.example"], "options": wanted})
    );

    // options present: others kept in place, ours appended.
    let pod = plain_pod(
        json!({"dnsConfig": {"options": [{"name": "edns0"}, {"name": "timeout", "value": "1"}]}}),
    );
    let out = h.pod("dns-other-options", "team-a", &pod);
    assert_eq!(
        out.object["spec"]["dnsConfig"]["options"],
        json!([{"name": "edns0"}, {"name": "timeout", "value": "1"},
               {"name": "ndots", "value": "2"}, {"name": "single-request-reopen"}])
    );

    // Already there: no duplicates, no patch.
    let pod = plain_pod(json!({"dnsConfig": {"options": [
        {"name": "single-request-reopen"}, {"name": "ndots", "value": "2"}]}}));
    let out = h.pod("dns-already", "team-a", &pod);
    assert!(out.patch.is_empty());

    // One of the two present: only the other is added.
    let pod = plain_pod(json!({"dnsConfig": {"options": [{"name": "single-request-reopen"}]}}));
    let out = h.pod("dns-half", "team-a", &pod);
    assert_eq!(
        out.object["spec"]["dnsConfig"]["options"],
        json!([{"name": "single-request-reopen"}, {"name": "ndots", "value": "2"}])
    );

    // dnsConfig: null is absent.
    let pod = plain_pod(json!({"dnsConfig": null}));
    let out = h.pod("dns-null", "team-a", &pod);
    assert_eq!(out.object["spec"]["dnsConfig"], json!({"options": wanted}));

    // The corpus pod with dnsPolicy None and its own ndots 2 + edns0.
    let text = std::fs::read_to_string(corpus_file(
        "kubernetes__website__content__en__examples__service__networking__custom-dns.yaml",
    ))
    .unwrap();
    let pod: Value = calmplane::yaml::from_str(&text).unwrap();
    let out = h.pod("dns-custom-dns", "default", &pod);
    assert_eq!(
        out.object["spec"]["dnsConfig"]["options"],
        json!([{"name": "ndots", "value": "2"}, {"name": "edns0"}, {"name": "single-request-reopen"}])
    );
    assert_eq!(
        out.object["spec"]["dnsConfig"]["nameservers"],
        json!(["192.0.2.1"])
    );
    h.finish();
}

#[test]
fn dns_respects_an_existing_ndots_unless_override() {
    let pod = plain_pod(json!({"dnsConfig": {"options": [{"name": "ndots", "value": "5"}]}}));
    let mut h = Harness::new(&only("dns"));
    let out = h.pod("ndots-respected", "team-a", &pod);
    assert_eq!(
        out.object["spec"]["dnsConfig"]["options"],
        json!([{"name": "ndots", "value": "5"}, {"name": "single-request-reopen"}])
    );

    let mut h2 = Harness::new(&config(
        "dns:\n  override: true\nlease: {enabled: false}\nprestop: {enabled: false}\n",
    ));
    let out = h2.pod("ndots-override", "team-a", &pod);
    assert_eq!(
        out.object["spec"]["dnsConfig"]["options"],
        json!([{"name": "ndots", "value": "2"}, {"name": "single-request-reopen"}])
    );
    // override with ndots already 2: nothing to do.
    let pod = plain_pod(json!({"dnsConfig": {"options": [
        {"name": "ndots", "value": "2"}, {"name": "single-request-reopen"}]}}));
    assert!(h2
        .pod("ndots-override-noop", "team-a", &pod)
        .patch
        .is_empty());
    h.finish();
    h2.finish();
}

#[test]
fn dns_skips_windows_pods() {
    let mut h = Harness::new(&Config::default());
    for (name, extra) in [
        ("os-name", json!({"os": {"name": "windows"}})),
        (
            "node-selector",
            json!({"nodeSelector": {"kubernetes.io/os": "windows"}}),
        ),
    ] {
        let pod = plain_pod(extra);
        let out = h.pod(name, "team-a", &pod);
        assert!(!out.policies.contains(&"dns"), "{name}: {:?}", out.policies);
        assert!(out.object["spec"].get("dnsConfig").is_none(), "{name}");
        assert!(paths(&out)
            .iter()
            .all(|p| !p.starts_with("/spec/dnsConfig")));
    }
    // Linux pods pinned by the same selector still get it.
    let pod =
        plain_pod(json!({"nodeSelector": {"kubernetes.io/os": "linux"}, "os": {"name": "linux"}}));
    let out = h.pod("linux", "team-a", &pod);
    assert!(out.policies.contains(&"dns"));
    h.finish();
}
