//! Reading one image file of an image column into its normalised features.
//!
//! A cell of an image column names a PNG or JPEG file. [`read_image`] decodes it under
//! [`limits`] (a file that claims a huge size is refused before anything that size is
//! allocated), checks its pixel format against the column's channels and its size against the
//! column's (or resizes it, with a fixed bilinear filter, when the column says `resize = true`),
//! scales each pixel value to `[0, 1]` (by 255, or 65535 for 16-bit files), normalises it with
//! the column's per-channel `mean` and `std`, and writes the features in CHW order: channel,
//! then row, then column.
//!
//! Accepted pixel formats: 8- or 16-bit grey for `channels = 1`; 8- or 16-bit RGB for
//! `channels = 3`. Anything with an alpha channel is refused, even when every pixel is opaque:
//! what an image means behind transparent pixels is not in the file, and a data manager can
//! strip an opaque alpha channel knowing it is so. Nothing a file holds can panic the reader;
//! every fault is a [`ProblemReason`] naming the file.

use std::fs::File;
use std::io::{BufReader, ErrorKind};
use std::path::Path;

use image::imageops::{self, FilterType};
use image::{
    ColorType, DynamicImage, ImageBuffer, ImageDecoder, ImageError, ImageReader, Limits, Luma,
    Pixel, Rgb,
};
use medfed_protocol::schema::ImageColumn;

use super::ProblemReason;

/// The widest and the tallest image file read, in pixels.
pub const MAX_IMAGE_SIDE: u32 = 16_384;

/// The most bytes one decoded image file may take (64 MiB: an 8-bit RGB image of about
/// 4,700 × 4,700 pixels). Its `f32` working copy takes up to four times as much.
pub const MAX_IMAGE_BYTES: u64 = 64 << 20;

/// The decoder's limits: [`MAX_IMAGE_SIDE`] each way and [`MAX_IMAGE_BYTES`] of allocation.
pub(super) fn limits() -> Limits {
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_IMAGE_BYTES);
    limits
}

/// Reads the image file at `path` as `column` declares it into `out`
/// (`column.num_features()` long): normalised pixel values, CHW.
pub(super) fn read_image(
    path: &Path,
    column: &ImageColumn,
    out: &mut [f32],
) -> Result<(), ProblemReason> {
    let unreadable = |message: String| ProblemReason::ImageUnreadable {
        path: path.to_owned(),
        message,
    };
    // A FIFO or a device named by a cell would block the open or never end: only a regular
    // file is opened.
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_file() => return Err(unreadable("not a regular file".into())),
        _ => {}
    }
    let file = File::open(path).map_err(|e| match e.kind() {
        ErrorKind::NotFound => ProblemReason::ImageMissing {
            path: path.to_owned(),
        },
        _ => unreadable(e.to_string()),
    })?;
    let mut reader = ImageReader::new(BufReader::new(file))
        .with_guessed_format()
        .map_err(|e| unreadable(e.to_string()))?;
    reader.limits(limits());
    let decoder = reader
        .into_decoder()
        .map_err(|e| unreadable(decoder_message(&e)))?;

    let colour = decoder.color_type();
    if !fits(colour, column.channels()) {
        return Err(ProblemReason::ImageChannels {
            path: path.to_owned(),
            found: colour,
            expected: column.channels(),
        });
    }
    let (width, height) = decoder.dimensions();
    let expected = (column.height(), column.width());
    if width == 0 || height == 0 {
        return Err(unreadable("the image has no pixels".into()));
    }
    if (height, width) != expected && !column.resize() {
        return Err(ProblemReason::ImageSize {
            path: path.to_owned(),
            found: (height, width),
            expected,
        });
    }
    if decoder.total_bytes() > MAX_IMAGE_BYTES {
        return Err(unreadable(format!(
            "{height}×{width} pixels would take {} bytes decoded; {}",
            decoder.total_bytes(),
            limits_text()
        )));
    }
    let decoded =
        DynamicImage::from_decoder(decoder).map_err(|e| unreadable(decoder_message(&e)))?;

    // Interleaved samples scaled to [0, 1].
    let samples = match &decoded {
        DynamicImage::ImageLuma8(b) => scaled(b.as_raw(), 255.0),
        DynamicImage::ImageLuma16(b) => scaled(b.as_raw(), 65_535.0),
        DynamicImage::ImageRgb8(b) => scaled(b.as_raw(), 255.0),
        DynamicImage::ImageRgb16(b) => scaled(b.as_raw(), 65_535.0),
        other => {
            return Err(ProblemReason::ImageChannels {
                path: path.to_owned(),
                found: other.color(),
                expected: column.channels(),
            });
        }
    };
    let samples = if (height, width) == expected {
        Some(samples)
    } else if column.channels() == 1 {
        resized::<Luma<f32>>((width, height), samples, expected)
    } else {
        resized::<Rgb<f32>>((width, height), samples, expected)
    };
    let Some(samples) = samples else {
        return Err(unreadable(
            "the decoded pixels do not fill the image's size".into(),
        ));
    };
    write_chw(&samples, column, out);
    Ok(())
}

/// The reader's limits, as a message says them.
fn limits_text() -> String {
    format!(
        "the reader takes at most {MAX_IMAGE_SIDE} pixels a side and {} MiB decoded",
        MAX_IMAGE_BYTES >> 20
    )
}

/// The decoder's explanation, with the reader's limits when it hit one.
fn decoder_message(error: &ImageError) -> String {
    match error {
        ImageError::Limits(_) => format!("{error}: {}", limits_text()),
        _ => error.to_string(),
    }
}

/// Whether pixels of `colour` are what a column of `channels` reads.
fn fits(colour: ColorType, channels: u8) -> bool {
    match channels {
        1 => matches!(colour, ColorType::L8 | ColorType::L16),
        3 => matches!(colour, ColorType::Rgb8 | ColorType::Rgb16),
        _ => false,
    }
}

/// `raw`'s samples divided by `max`.
fn scaled<T: Copy + Into<f32>>(raw: &[T], max: f32) -> Vec<f32> {
    raw.iter().map(|&v| v.into() / max).collect()
}

/// The interleaved samples of a `(width, height)` image resized to `(height, width) = to`
/// with the bilinear (triangle) filter; `None` if `samples` is not that image's size.
fn resized<P: Pixel<Subpixel = f32> + 'static>(
    (width, height): (u32, u32),
    samples: Vec<f32>,
    to: (u32, u32),
) -> Option<Vec<f32>> {
    let buffer = ImageBuffer::<P, Vec<f32>>::from_raw(width, height, samples)?;
    Some(imageops::resize(&buffer, to.1, to.0, FilterType::Triangle).into_raw())
}

/// Writes interleaved samples (`height × width × channels`, scaled to `[0, 1]`) into `out` in
/// CHW order, each normalised by its channel's mean and std.
fn write_chw(samples: &[f32], column: &ImageColumn, out: &mut [f32]) {
    let channels = usize::from(column.channels());
    let plane = column.height() as usize * column.width() as usize;
    for (c, (&mean, &std)) in column.mean().iter().zip(column.std()).enumerate() {
        let values = samples.iter().skip(c).step_by(channels);
        for (slot, &v) in out[c * plane..(c + 1) * plane].iter_mut().zip(values) {
            *slot = (v - mean) / std;
        }
    }
}

/// How a message names a pixel format: `grey, 8-bit`, `RGB with alpha, 16-bit`, ….
pub(super) fn colour_name(colour: ColorType) -> &'static str {
    match colour {
        ColorType::L8 => "grey, 8-bit",
        ColorType::L16 => "grey, 16-bit",
        ColorType::La8 => "grey with alpha, 8-bit",
        ColorType::La16 => "grey with alpha, 16-bit",
        ColorType::Rgb8 => "RGB, 8-bit",
        ColorType::Rgb16 => "RGB, 16-bit",
        ColorType::Rgba8 => "RGB with alpha, 8-bit",
        ColorType::Rgba16 => "RGB with alpha, 16-bit",
        ColorType::Rgb32F => "RGB, 32-bit float",
        ColorType::Rgba32F => "RGB with alpha, 32-bit float",
        _ => "another pixel format",
    }
}

/// What a column of `channels` accepts, as a message says it.
pub(super) fn accepted(channels: u8) -> &'static str {
    if channels == 1 {
        "grey, 8- or 16-bit, without alpha"
    } else {
        "RGB, 8- or 16-bit, without alpha"
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use image::{GrayImage, ImageBuffer, LumaA, Rgb, RgbImage, Rgba};
    use medfed_protocol::schema::{EXAMPLE_IMAGE_SCHEMA, Schema};

    use crate::data::{
        DataError, Dataset, ProblemReason, ReadOptions, RowProblem, load_csv, read_rows,
    };

    /// `age`, a 2×3 grey image `scan` normalised by mean 0.5 and std 0.25, and `sex`.
    fn grey() -> String {
        EXAMPLE_IMAGE_SCHEMA.replace("width = 3\n", "width = 3\nmean = [0.5]\nstd = [0.25]\n")
    }

    /// A data directory with an `img/` folder for image files.
    struct Site {
        dir: tempfile::TempDir,
    }

    impl Site {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir(dir.path().join("img")).unwrap();
            Self { dir }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        /// Writes `rows` (after the header `age,scan,sex,y`) to `site.csv`; returns its path.
        fn csv(&self, rows: &str) -> PathBuf {
            let path = self.path("site.csv");
            std::fs::write(&path, format!("age,scan,sex,y\n{rows}")).unwrap();
            path
        }

        /// The 2×3 grey PNG `img/name` of values 0, 51, …, 255 in row order.
        fn grey_png(&self, name: &str) {
            let pixels = vec![0, 51, 102, 153, 204, 255];
            let image = GrayImage::from_raw(3, 2, pixels).unwrap();
            image.save(self.path(&format!("img/{name}"))).unwrap();
        }
    }

    /// What `grey()` makes of 0, 51, …, 255: `(v/255 − 0.5) / 0.25`.
    const GREY_FEATURES: [f32; 6] = [-2.0, -1.2, -0.4, 0.4, 1.2, 2.0];

    fn assert_close(found: &[f32], expected: &[f32], tolerance: f32) {
        assert_eq!(found.len(), expected.len(), "{found:?} vs {expected:?}");
        for (i, (f, e)) in found.iter().zip(expected).enumerate() {
            assert!(
                (f - e).abs() <= tolerance,
                "feature {i}: {f} vs {e} ({found:?})"
            );
        }
    }

    #[test]
    fn a_grey_png_becomes_its_normalised_pixels_between_the_other_features() {
        let site = Site::new();
        site.grey_png("a.png");
        // Absolute paths are taken as they are.
        let absolute = site.path("img/a.png");
        let csv = site.csv(&format!(
            "40,img/a.png,F,1\n41, {} ,M,0\n",
            absolute.display()
        ));
        let data = load_csv(&csv, &Schema::parse(&grey()).unwrap()).unwrap();
        assert_eq!(data.examples.num_features, 1 + 6 + 2);
        assert_eq!(data.len(), 2);
        let rows: Vec<&[f32]> = data.examples.features.chunks(9).collect();
        assert_eq!(rows[0][0], 40.0);
        assert_close(&rows[0][1..7], &GREY_FEATURES, 1e-6);
        assert_eq!(rows[0][7..], [1.0, 0.0]);
        assert_close(&rows[1][1..7], &GREY_FEATURES, 1e-6);
        assert_eq!(data.examples.labels, [1.0, 0.0]);
    }

    #[test]
    fn a_16_bit_grey_png_is_scaled_by_65535() {
        let site = Site::new();
        let pixels: Vec<u16> = vec![0, 13_107, 26_214, 39_321, 52_428, 65_535];
        let image = ImageBuffer::<image::Luma<u16>, _>::from_raw(3, 2, pixels).unwrap();
        image.save(site.path("img/deep.png")).unwrap();
        let csv = site.csv("40,img/deep.png,F,1\n");
        let data = load_csv(&csv, &Schema::parse(&grey()).unwrap()).unwrap();
        assert_close(&data.examples.features[1..7], &GREY_FEATURES, 1e-6);
    }

    #[test]
    fn an_rgb_png_is_written_channel_first_with_each_channels_normalisation() {
        let site = Site::new();
        let schema = grey().replace(
            "channels = 1\nheight = 2\nwidth = 3\nmean = [0.5]\nstd = [0.25]",
            "channels = 3\nheight = 1\nwidth = 2\nmean = [0.5, 0.4, 0.2]\nstd = [0.25, 0.5, 0.1]",
        );
        let image = RgbImage::from_raw(2, 1, vec![255, 0, 51, 0, 255, 102]).unwrap();
        image.save(site.path("img/c.png")).unwrap();
        let csv = site.csv("40,img/c.png,F,1\n");
        let data = load_csv(&csv, &Schema::parse(&schema).unwrap()).unwrap();
        // Red of both pixels, then green, then blue.
        let expected = [
            (1.0 - 0.5) / 0.25,
            (0.0 - 0.5) / 0.25,
            (0.0 - 0.4) / 0.5,
            (1.0 - 0.4) / 0.5,
            (0.2 - 0.2) / 0.1,
            (0.4 - 0.2) / 0.1,
        ];
        assert_close(&data.examples.features[1..7], &expected, 1e-5);
    }

    #[test]
    fn a_jpeg_is_read_as_a_png_is() {
        let site = Site::new();
        GrayImage::from_pixel(3, 2, image::Luma([204]))
            .save(site.path("img/s.jpg"))
            .unwrap();
        let csv = site.csv("40,img/s.jpg,F,1\n");
        let data = load_csv(&csv, &Schema::parse(&grey()).unwrap()).unwrap();
        // JPEG is lossy: within two grey levels, (2/255)/0.25.
        assert_close(&data.examples.features[1..7], &[1.2; 6], 0.032);
    }

    #[test]
    fn resize_brings_any_size_to_the_declared_one_the_same_way_every_time() {
        let site = Site::new();
        let schema = grey().replace("std = [0.25]", "std = [0.25]\nresize = true");
        let schema = Schema::parse(&schema).unwrap();
        GrayImage::from_pixel(30, 17, image::Luma([204]))
            .save(site.path("img/big.png"))
            .unwrap();
        GrayImage::from_pixel(1, 1, image::Luma([51]))
            .save(site.path("img/dot.png"))
            .unwrap();
        let mut noise = GrayImage::new(31, 9);
        for (i, p) in noise.pixels_mut().enumerate() {
            p.0[0] = (i * 97 % 251) as u8;
        }
        noise.save(site.path("img/noise.png")).unwrap();
        site.grey_png("a.png");
        let csv = site.csv(
            "40,img/big.png,F,1\n41,img/dot.png,F,0\n42,img/noise.png,M,1\n43,img/a.png,M,0\n",
        );
        let data = load_csv(&csv, &schema).unwrap();
        let rows: Vec<&[f32]> = data.examples.features.chunks(9).collect();
        // Down- and upscaled constant images stay constant.
        assert_close(&rows[0][1..7], &[1.2; 6], 1e-5);
        assert_close(&rows[1][1..7], &[-1.2; 6], 1e-5);
        // A resized image reads the same every time, within its values' range.
        let again = load_csv(&csv, &schema).unwrap();
        assert_eq!(again.examples.features, data.examples.features);
        assert!(rows[2][1..7].iter().all(|v| (-2.0..=2.0).contains(v)));
        // An image of the declared size is left as it is.
        assert_close(&rows[3][1..7], &GREY_FEATURES, 1e-6);
    }

    /// The bytes of a PNG whose header claims `width × height` grey pixels, with no data.
    fn png_header(width: u32, height: u32) -> Vec<u8> {
        fn crc32(bytes: &[u8]) -> u32 {
            let mut crc = !0u32;
            for &b in bytes {
                crc ^= u32::from(b);
                for _ in 0..8 {
                    crc = if crc & 1 == 1 {
                        (crc >> 1) ^ 0xEDB8_8320
                    } else {
                        crc >> 1
                    };
                }
            }
            !crc
        }
        let mut chunk = b"IHDR".to_vec();
        chunk.extend_from_slice(&width.to_be_bytes());
        chunk.extend_from_slice(&height.to_be_bytes());
        // 8-bit grey, deflate, adaptive filtering, no interlace.
        chunk.extend_from_slice(&[8, 0, 0, 0, 0]);
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend_from_slice(&13u32.to_be_bytes());
        png.extend_from_slice(&chunk);
        png.extend_from_slice(&crc32(&chunk).to_be_bytes());
        png
    }

    /// Loads a one-row file whose image cell is `cell`, expecting an error that names the file,
    /// row 2, the column and the image's path.
    fn refused(site: &Site, schema: &str, cell: &str) -> DataError {
        let csv = site.csv(&format!("40,{cell},F,1\n"));
        let err = load_csv(&csv, &Schema::parse(schema).unwrap()).expect_err("refused");
        let message = err.to_string();
        for part in [
            csv.display().to_string(),
            "row 2".into(),
            "column \"scan\"".into(),
            site.path(cell).display().to_string(),
        ] {
            assert!(message.contains(&part), "{part:?} not in: {message}");
        }
        err
    }

    #[test]
    fn every_bad_image_is_refused_naming_the_file_row_column_and_image() {
        let site = Site::new();
        let err = refused(&site, &grey(), "img/none.png");
        assert!(
            matches!(err, DataError::ImageMissing { row: 2, .. }),
            "{err}"
        );

        // A FIFO would block the open until someone writes to it; it is refused unopened.
        let fifo = site.path("img/pipe.png");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let err = refused(&site, &grey(), "img/pipe.png");
        assert!(
            matches!(&err, DataError::ImageUnreadable { message, .. } if message == "not a regular file"),
            "{err}"
        );

        std::fs::write(site.path("img/text.png"), "age,sex\n40,F\n").unwrap();
        let err = refused(&site, &grey(), "img/text.png");
        assert!(matches!(err, DataError::ImageUnreadable { .. }), "{err}");

        site.grey_png("whole.png");
        let whole = std::fs::read(site.path("img/whole.png")).unwrap();
        std::fs::write(site.path("img/cut.png"), &whole[..whole.len() - 20]).unwrap();
        let err = refused(&site, &grey(), "img/cut.png");
        assert!(matches!(err, DataError::ImageUnreadable { .. }), "{err}");

        GrayImage::new(2, 3)
            .save(site.path("img/turned.png"))
            .unwrap();
        let err = refused(&site, &grey(), "img/turned.png");
        assert!(
            matches!(
                err,
                DataError::ImageSize {
                    found: (3, 2),
                    expected: (2, 3),
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("3×2"), "{err}");

        // A header claiming 100,000 × 100,000 pixels (10 GB) is refused before any allocation,
        // with or without resize.
        std::fs::write(site.path("img/bomb.png"), png_header(100_000, 100_000)).unwrap();
        for schema in [
            grey(),
            grey().replace("std = [0.25]", "std = [0.25]\nresize = true"),
        ] {
            let err = refused(&site, &schema, "img/bomb.png");
            assert!(matches!(err, DataError::ImageUnreadable { .. }), "{err}");
            assert!(
                err.to_string().contains("at most 16384 pixels a side"),
                "{err}"
            );
        }
        // One inside the side limit but over the byte limit: refused too.
        std::fs::write(site.path("img/wide.png"), png_header(16_000, 16_000)).unwrap();
        let resize = grey().replace("std = [0.25]", "std = [0.25]\nresize = true");
        let err = refused(&site, &resize, "img/wide.png");
        assert!(matches!(err, DataError::ImageUnreadable { .. }), "{err}");
    }

    #[test]
    fn a_pixel_format_that_does_not_fit_the_channels_is_refused_naming_it() {
        let site = Site::new();
        RgbImage::new(3, 2).save(site.path("img/rgb.png")).unwrap();
        ImageBuffer::<LumaA<u8>, _>::new(3, 2)
            .save(site.path("img/la.png"))
            .unwrap();
        let err = refused(&site, &grey(), "img/rgb.png");
        assert!(
            matches!(
                err,
                DataError::ImageChannels {
                    found: image::ColorType::Rgb8,
                    expected: 1,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("is RGB, 8-bit"), "{err}");
        let err = refused(&site, &grey(), "img/la.png");
        assert!(err.to_string().contains("grey with alpha"), "{err}");

        let rgb = grey().replace(
            "channels = 1\nheight = 2\nwidth = 3\nmean = [0.5]\nstd = [0.25]",
            "channels = 3\nheight = 2\nwidth = 3",
        );
        site.grey_png("grey.png");
        let err = refused(&site, &rgb, "img/grey.png");
        assert!(err.to_string().contains("is grey, 8-bit"), "{err}");
        // Alpha is refused even when every pixel is opaque.
        ImageBuffer::<Rgba<u8>, _>::from_pixel(3, 2, Rgba([1, 2, 3, 255]))
            .save(site.path("img/rgba.png"))
            .unwrap();
        let err = refused(&site, &rgb, "img/rgba.png");
        assert!(
            err.to_string().contains("RGB with alpha, 8-bit")
                && err.to_string().contains("without alpha"),
            "{err}"
        );
        // And the same column reads an RGB file.
        RgbImage::from_pixel(3, 2, Rgb([255, 0, 0]))
            .save(site.path("img/red.png"))
            .unwrap();
        let csv = site.csv("40,img/red.png,F,1\n");
        load_csv(&csv, &Schema::parse(&rgb).unwrap()).unwrap();
    }

    #[test]
    fn read_rows_keeps_the_good_rows_and_reports_every_bad_image() {
        let site = Site::new();
        site.grey_png("a.png");
        std::fs::write(site.path("img/text.png"), "not an image").unwrap();
        GrayImage::new(4, 4).save(site.path("img/big.png")).unwrap();
        let csv = site.csv(
            "40,img/a.png,F,1\n41,img/none.png,F,0\n42,img/text.png,M,1\n\
             43,,M,0\n44,img/big.png,F,1\n45,img/a.png,M,0\n",
        );
        let schema = Schema::parse(&grey()).unwrap();
        let (data, problems): (Dataset, Vec<RowProblem>) =
            read_rows(&csv, &schema, &ReadOptions::default()).unwrap();
        assert_eq!(data.rows, [2, 7]);
        let found: Vec<(u64, Option<&str>, &str)> = problems
            .iter()
            .map(|p| (p.row, p.column.as_deref(), p.reason.kind()))
            .collect();
        assert_eq!(
            found,
            [
                (3, Some("scan"), "image file missing"),
                (4, Some("scan"), "unreadable image"),
                (5, Some("scan"), "missing value"),
                (6, Some("scan"), "wrong image size"),
            ]
        );
        // As `check` prints them: the row, the column and the image file.
        let missing = site.path("img/none.png");
        assert_eq!(
            problems[0].to_string(),
            format!(
                "row 3, column \"scan\": image file {} not found",
                missing.display()
            )
        );
        assert!(matches!(
            &problems[0].reason,
            ProblemReason::ImageMissing { path } if *path == missing
        ));
        assert_eq!(
            problems[3].to_string(),
            format!(
                "row 6, column \"scan\": image file {} is 4×4 (height×width), the schema declares \
                 2×3 and no resize",
                site.path("img/big.png").display()
            )
        );
    }
}
