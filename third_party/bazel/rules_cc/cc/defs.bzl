"""Offline stand-in for @rules_cc//cc:defs.bzl.

Bazel 4.2.3's own @bazel_tools BUILD files load their C++ rules from
@rules_cc//cc:defs.bzl, which Bazel would otherwise download. In Bazel 4 the
real rules_cc is itself a thin wrapper around the native rules, so each rule
here simply forwards to `native.<rule>`. tff_brats has no C++ code; this only
has to load and analyse.
"""

def cc_binary(**attrs):
    native.cc_binary(**attrs)

def cc_import(**attrs):
    native.cc_import(**attrs)

def cc_library(**attrs):
    native.cc_library(**attrs)

def cc_proto_library(**attrs):
    native.cc_proto_library(**attrs)

def cc_shared_library(**attrs):
    native.cc_shared_library(**attrs)

def cc_test(**attrs):
    native.cc_test(**attrs)

def cc_toolchain(**attrs):
    native.cc_toolchain(**attrs)

def cc_toolchain_suite(**attrs):
    native.cc_toolchain_suite(**attrs)

def fdo_prefetch_hints(**attrs):
    native.fdo_prefetch_hints(**attrs)

def fdo_profile(**attrs):
    native.fdo_profile(**attrs)

def objc_import(**attrs):
    native.objc_import(**attrs)

def objc_library(**attrs):
    native.objc_library(**attrs)
