//! A synthetic image cohort for the end-to-end tests of image models: per hospital, grey 28×28
//! PNG "scans" and a CSV naming them, with a label a small CNN can learn from the pixels alone.
//!
//! Each scan is dark noise with one bright bar, three pixels thick and 12 to 20 long, at a
//! random place: vertical for a positive patient, horizontal for a negative one (the pixel
//! count is the same, so only the bar's direction tells them apart). 3% of the labels are then
//! flipped, so a perfect reader of the scans reaches an AUC of about 0.97, not 1. Sex and age are
//! drawn apart from the label; the schema audits them without making them model inputs, so the
//! model's input is the image's 784 features exactly (`Shape::Image { 1, 28, 28 }`).
//!
//! ```text
//!  dir/
//!    site-a.csv                    scan,label,sex,age
//!    site-a-scans/0.png …          site-a-scans/0.png,1,F,61
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use image::{GrayImage, Luma};

use crate::SplitMix;

/// Side of each scan, in pixels.
pub const SCAN_SIDE: u32 = 28;

/// The share of labels flipped after drawing the scans.
pub const LABEL_NOISE: f64 = 0.03;

/// The schema of the image cohort: the `scan` image as the only model input (1×28×28,
/// normalised by mean 0.2 and std 0.3, about the pixels' own), the label, and two audit-only
/// sensitive attributes, `sex` and `age` (banded at 45 and 65).
pub const IMAGE_SCHEMA: &str = r#"
sensitive = ["sex", "age"]

[label]
column = "label"
positive = ["1"]
negative = ["0"]

[[columns]]
name = "scan"
type = "image"
channels = 1
height = 28
width = 28
mean = [0.2]
std = [0.3]

[[columns]]
name = "sex"
type = "categorical"
levels = ["F", "M"]
input = false

[[columns]]
name = "age"
type = "numeric"
range = [18, 100]
input = false

[bands]
age = [45, 65]
"#;

/// Writes hospital `name`'s image cohort of `rows` patients into `dir`: the scans under
/// `dir/{name}-scans/`, and the CSV `dir/{name}.csv` (`scan,label,sex,age`, each scan's path
/// relative to the CSV). `site` seeds the draw: the same arguments write the same files.
/// Returns the CSV's path, which is where [`crate::Consortium::csv`] looks for `name`'s data.
pub fn write_image_cohort(
    dir: &Path,
    name: &str,
    rows: usize,
    site: u64,
) -> std::io::Result<PathBuf> {
    let mut rng = SplitMix(site.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ 0x5ca1_ab1e);
    let scans = format!("{name}-scans");
    std::fs::create_dir_all(dir.join(&scans))?;
    let mut csv = String::from("scan,label,sex,age\n");
    for i in 0..rows {
        let vertical = rng.uniform() < 0.5;
        let scan = draw_scan(&mut rng, vertical);
        let file = format!("{scans}/{i}.png");
        scan.save(dir.join(&file)).map_err(std::io::Error::other)?;
        let flipped = rng.uniform() < LABEL_NOISE;
        let label = u8::from(vertical != flipped);
        let sex = if rng.uniform() < 0.5 { "F" } else { "M" };
        let age = (55.0 + 15.0 * rng.normal()).clamp(18.0, 100.0).round();
        let _ = writeln!(csv, "{file},{label},{sex},{age}");
    }
    let path = dir.join(format!("{name}.csv"));
    std::fs::write(&path, csv)?;
    Ok(path)
}

/// One scan: noise around a dark grey, and a bright bar 3 pixels thick, 12 to 20 long,
/// anywhere it fits, vertical or horizontal.
fn draw_scan(rng: &mut SplitMix, vertical: bool) -> GrayImage {
    let side = SCAN_SIDE as usize;
    let mut pixels = vec![0.0f64; side * side];
    for p in &mut pixels {
        *p = 40.0 + 15.0 * rng.normal();
    }
    let length = 12 + (rng.uniform() * 9.0) as usize;
    let thickness = 3;
    let along = (rng.uniform() * (side - length + 1) as f64) as usize;
    let across = (rng.uniform() * (side - thickness + 1) as f64) as usize;
    let brightness = 170.0 + 50.0 * rng.uniform();
    for a in along..along + length {
        for b in across..across + thickness {
            let (y, x) = if vertical { (a, b) } else { (b, a) };
            pixels[y * side + x] = brightness + 20.0 * rng.normal();
        }
    }
    GrayImage::from_fn(SCAN_SIDE, SCAN_SIDE, |x, y| {
        Luma([pixels[y as usize * side + x as usize].clamp(0.0, 255.0) as u8])
    })
}

#[cfg(test)]
mod tests {
    use medfed_node::data::load_csv;
    use medfed_protocol::schema::Schema;

    use super::*;

    #[test]
    fn the_cohort_decodes_through_the_node_reader_balanced_and_learnable() {
        let dir = tempfile::tempdir().unwrap();
        let rows = 400;
        let csv = write_image_cohort(dir.path(), "site-a", rows, 1).unwrap();
        assert_eq!(csv, dir.path().join("site-a.csv"));
        let schema = Schema::parse(IMAGE_SCHEMA).unwrap();
        assert_eq!(schema.num_features(), 784);
        let data = load_csv(&csv, &schema).unwrap();
        assert_eq!(data.len(), rows);

        let positives = data.examples.labels.iter().filter(|&&l| l == 1.0).count();
        assert!(
            (rows * 2 / 5..=rows * 3 / 5).contains(&positives),
            "{positives} positives of {rows}"
        );
        for level in ["F", "M"] {
            assert!(data.sensitive.iter().any(|s| s[0] == level), "no {level}");
        }

        // The label is in the pixels: the bar's direction, read by hand (the brightest column
        // against the brightest row), agrees with it but for the flipped labels.
        let side = SCAN_SIDE as usize;
        let agree = data
            .examples
            .features
            .chunks(side * side)
            .zip(&data.examples.labels)
            .filter(|(pixels, label)| {
                let column = (0..side)
                    .map(|x| (0..side).map(|y| pixels[y * side + x]).sum::<f32>())
                    .fold(f32::MIN, f32::max);
                let row = (0..side)
                    .map(|y| pixels[y * side..(y + 1) * side].iter().sum::<f32>())
                    .fold(f32::MIN, f32::max);
                (column > row) == (**label == 1.0)
            })
            .count();
        assert!(agree >= rows * 93 / 100, "{agree} of {rows} agree");
        assert!(agree < rows, "no label noise");

        // The same seed writes the same files; another site another cohort.
        let again = tempfile::tempdir().unwrap();
        write_image_cohort(again.path(), "site-a", rows, 1).unwrap();
        let read = |d: &Path, f: &str| std::fs::read(d.join(f)).unwrap();
        assert_eq!(
            read(dir.path(), "site-a.csv"),
            read(again.path(), "site-a.csv")
        );
        assert_eq!(
            read(dir.path(), "site-a-scans/7.png"),
            read(again.path(), "site-a-scans/7.png")
        );
        write_image_cohort(again.path(), "site-b", rows, 2).unwrap();
        assert_ne!(
            read(again.path(), "site-a-scans/7.png"),
            read(again.path(), "site-b-scans/7.png")
        );
    }
}
