//! What the export macros expand to: adapters that keep the plugin's state
//! between calls and translate the trait methods to the WIT exports.
//! Not public API.

use crate::types::*;
use crate::{Feature, LateHandler, ParseOutputBuilder, Parser, Updates};
use std::any::Any;
use std::cell::RefCell;
use std::marker::PhantomData;

thread_local! {
    // A component instance is single-threaded; this holds the one plugin value.
    static STATE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

fn set_state<T: 'static>(value: T) {
    STATE.with(|s| *s.borrow_mut() = Some(Box::new(value)));
}

fn with_state<T: 'static, R>(missing: R, f: impl FnOnce(&mut T) -> R) -> R {
    STATE.with(
        |s| match s.borrow_mut().as_mut().and_then(|b| b.downcast_mut::<T>()) {
            Some(state) => f(state),
            None => missing,
        },
    )
}

const NOT_INITIALISED: &str = "plugin called before init";

pub struct ParserAdapter<T>(PhantomData<T>);

impl<T: Parser> ParserAdapter<T> {
    pub fn do_init(config: String) -> Result<(), String> {
        set_state(T::init(&config)?);
        Ok(())
    }

    pub fn do_parse(batch: RawBatch) -> ParseOutput {
        let mut out = ParseOutputBuilder::new();
        let ok = with_state::<T, _>(false, |p| {
            p.parse(&batch, &mut out);
            true
        });
        if !ok {
            for row in 0..batch.len() {
                out.error(row, NOT_INITIALISED);
            }
        }
        out.finish()
    }
}

pub struct FeatureAdapter<T>(PhantomData<T>);

impl<T: Feature> FeatureAdapter<T> {
    pub fn do_init(config: String) -> Result<Vec<FeatureSpec>, String> {
        let (plugin, specs) = T::init(&config)?;
        set_state(plugin);
        Ok(specs)
    }

    pub fn do_process(events: EventBatch) -> Result<UpdateBatch, String> {
        with_state::<T, _>(Err(NOT_INITIALISED.to_string()), |p| {
            let mut out = Updates::with_capacity(events.len() * 2);
            p.process(&events, &mut out)?;
            Ok(out.into_batch())
        })
    }
}

pub struct LateAdapter<T>(PhantomData<T>);

impl<T: LateHandler> LateAdapter<T> {
    pub fn do_init(config: String) -> Result<(), String> {
        set_state(T::init(&config)?);
        Ok(())
    }

    pub fn do_decide(batch: LateBatch) -> Vec<LateDecision> {
        let n = batch.events.len();
        with_state::<T, _>(
            vec![LateDecision::SideOutput(NOT_INITIALISED.to_string()); n],
            |p| p.decide(&batch),
        )
    }
}

/// Exports a [`Parser`](crate::Parser) as the plugin's `parser` interface.
#[macro_export]
macro_rules! export_parser {
    ($t:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type __TesseraParser = $crate::__private::ParserAdapter<$t>;
            $crate::__private::parser_world::export_parser_world!(__TesseraParser with_types_in $crate::__private::parser_world);
        };
    };
}

/// Exports a [`Feature`](crate::Feature) as the plugin's `feature` interface.
#[macro_export]
macro_rules! export_feature {
    ($t:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type __TesseraFeature = $crate::__private::FeatureAdapter<$t>;
            $crate::__private::feature_world::export_feature_world!(__TesseraFeature with_types_in $crate::__private::feature_world);
        };
    };
}

/// Exports a [`LateHandler`](crate::LateHandler) as the plugin's
/// `late-handler` interface.
#[macro_export]
macro_rules! export_late_handler {
    ($t:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type __TesseraLate = $crate::__private::LateAdapter<$t>;
            $crate::__private::late_world::export_late_world!(__TesseraLate with_types_in $crate::__private::late_world);
        };
    };
}
