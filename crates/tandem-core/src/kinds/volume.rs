//! `volume`: the role of a replicated `[[volume]]`: promoted to primary on
//! start (its NBD export then serves), demoted on stop.

use super::{Field, Fields, Kind, Spec};

/// A replicated volume's role.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Volume {
    /// Name of the `[[volume]]`.
    pub volume: String,
}

impl Kind for Volume {
    const NAME: &'static str = "volume";
    const SUMMARY: &'static str = "the primary role of a replicated [[volume]]";
    const FIELDS: &'static [Field] = &[Field {
        name: "volume",
        doc: "the [[volume]] this resource promotes and demotes",
        default: None,
    }];

    fn check(f: &mut Fields<'_>) -> Option<Volume> {
        let v = f.require::<String>("volume", "volume", "volume = \"NAME\" naming a [[volume]]")?;
        let volumes = f.cx.volumes;
        f.unknown_ref("volume", &v, volumes);
        Some(Volume {
            volume: v.into_inner(),
        })
    }
}

impl Spec for Volume {
    fn describe(&self) -> String {
        format!("volume {}", self.volume)
    }

    fn volume(&self) -> Option<&str> {
        Some(&self.volume)
    }
}
