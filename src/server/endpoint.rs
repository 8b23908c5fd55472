//! The routes of the TLS port, and what each may cost: one place that says
//! which paths take a body and how large, which are shed under load, which
//! need a client certificate, and how they are counted.

use crate::budget;

/// A route of the TLS port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `POST /mutate`: the apiserver's AdmissionReviews, answered with a patch.
    Mutate,
    /// `POST /report`: the same reviews from report-mode namespaces, never patched.
    Report,
    /// `POST /preview`: a person's manifests, answered with what would change.
    Preview,
    /// `GET /healthz`: liveness.
    Healthz,
    /// `GET /readyz`: readiness, false while shutting down.
    Readyz,
    /// Any other path: a 404 from the router.
    Other,
}

impl Endpoint {
    /// Every endpoint with a route, for metrics that exist from the start.
    pub const ROUTED: [Endpoint; 5] = [
        Endpoint::Mutate,
        Endpoint::Report,
        Endpoint::Preview,
        Endpoint::Healthz,
        Endpoint::Readyz,
    ];

    /// The endpoint of a request path.
    pub fn of(path: &str) -> Endpoint {
        match path {
            "/mutate" => Endpoint::Mutate,
            "/report" => Endpoint::Report,
            "/preview" => Endpoint::Preview,
            "/healthz" => Endpoint::Healthz,
            "/readyz" => Endpoint::Readyz,
            _ => Endpoint::Other,
        }
    }

    /// The route's path.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Mutate => "/mutate",
            Endpoint::Report => "/report",
            Endpoint::Preview => "/preview",
            Endpoint::Healthz => "/healthz",
            Endpoint::Readyz => "/readyz",
            Endpoint::Other => "/",
        }
    }

    /// The path without its slash, for metric labels.
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::Other => "other",
            e => &e.path()[1..],
        }
    }

    /// Whether requests carry an AdmissionReview from the apiserver: their
    /// errors are counted in `calmplane_admission_requests_total`.
    pub fn is_admission(self) -> bool {
        matches!(self, Endpoint::Mutate | Endpoint::Report)
    }

    /// Whether a request makes the server work in proportion to its body:
    /// shed under load, and refused without a client certificate under
    /// `--client-ca`. Probes never are.
    pub fn costs_work(self) -> bool {
        matches!(
            self,
            Endpoint::Mutate | Endpoint::Report | Endpoint::Preview
        )
    }

    /// The largest body the endpoint reads; `None` for those that read none.
    pub fn max_body(self) -> Option<usize> {
        match self {
            Endpoint::Mutate | Endpoint::Report => Some(budget::MAX_REVIEW_BODY),
            Endpoint::Preview => Some(budget::MAX_PREVIEW_BODY),
            Endpoint::Healthz | Endpoint::Readyz | Endpoint::Other => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_round_trip_and_only_work_is_limited() {
        for e in Endpoint::ROUTED {
            assert_eq!(Endpoint::of(e.path()), e);
            assert_eq!(e.costs_work(), e.max_body().is_some(), "{e:?}");
        }
        assert_eq!(Endpoint::of("/mutate/"), Endpoint::Other);
        assert_eq!(Endpoint::Report.label(), "report");
        assert!(!Endpoint::Healthz.costs_work());
    }
}
