//! `calmplane preview` prints the same JSON as the endpoint.

use super::*;

fn cli_preview(args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
    use std::io::Write;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_calmplane"));
    cmd.arg("preview").args(args);
    for var in [
        "CALMPLANE_CONFIG",
        "CALMPLANE_PREVIEW_FILE",
        "CALMPLANE_PREVIEW_NAMESPACE",
    ] {
        cmd.env_remove(var);
    }
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("calmplane binary runs");
    {
        let mut pipe = child.stdin.take().unwrap();
        if let Some(bytes) = stdin {
            pipe.write_all(bytes).unwrap();
        }
    }
    child.wait_with_output().unwrap()
}

#[tokio::test]
async fn cli_preview_prints_the_same_json_as_the_endpoint() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let dir = tempfile::tempdir().unwrap();
    let mut p = pod("p", None);
    p["metadata"]["annotations"] = json!({annotations::LEASE_SELECTOR: "metadata.name=p"});
    p["spec"]["terminationGracePeriodSeconds"] = json!(5);
    let pod_file = dir.path().join("pod.json");
    std::fs::write(&pod_file, serde_json::to_vec(&p).unwrap()).unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/deployment.yaml");

    let inputs: Vec<(PathBuf, Option<&str>)> = vec![
        (pod_file.clone(), Some("team-a")),
        (pod_file.clone(), None),
        (examples, None),
        (
            corpus_file(
                "GoogleCloudPlatform__microservices-demo__release__kubernetes-manifests.yaml",
            ),
            Some("demo"),
        ),
        (
            corpus_file("linkerd__linkerd2__cli__cmd__testdata__inject_emojivoto_list.input.yml"),
            None,
        ),
        (
            corpus_file("kubernetes__website__content__en__examples__pods__lifecycle-events.yaml"),
            None,
        ),
        (
            corpus_file(
                "kubewarden__policy-server__tests__data__pod_with_privileged_containers.json",
            ),
            None,
        ),
        (
            corpus_file("open-policy-agent__gatekeeper__test__expansion__cronjob.yaml"),
            Some("jobs"),
        ),
    ];
    for (file, ns) in inputs {
        let body = std::fs::read(&file).unwrap();
        let path = match ns {
            Some(ns) => format!("/preview?namespace={ns}"),
            None => "/preview".to_string(),
        };
        let http =
            super::preview::post_preview(&mut c, &path, "application/yaml", body.clone()).await;
        let file_arg = file.display().to_string();
        let mut args = vec!["-f", file_arg.as_str()];
        if let Some(ns) = ns {
            args.extend(["--namespace", ns]);
        }
        let out = cli_preview(&args, None);
        assert!(
            out.status.success(),
            "{file_arg}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cli: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{file_arg}: CLI output is not JSON: {e}"));
        assert_eq!(cli, http, "{file_arg} (namespace {ns:?})");
        // stdin gives the same.
        let mut args = vec!["-f", "-"];
        if let Some(ns) = ns {
            args.extend(["-n", ns]);
        }
        let out = cli_preview(&args, Some(&body));
        assert!(out.status.success());
        let from_stdin: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(from_stdin, http, "{file_arg} from stdin");
    }

    // An input the endpoint refuses fails the CLI with the same message.
    let octal = corpus_file("elastic__beats__deploy__kubernetes__filebeat-kubernetes.yaml");
    let reply = c
        .preview(
            "/preview",
            "application/yaml",
            std::fs::read(&octal).unwrap(),
        )
        .await;
    let message = expect_error(&reply, 400);
    let out = cli_preview(&["-f", &octal.display().to_string()], None);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&message),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(server.stop().await);
}
