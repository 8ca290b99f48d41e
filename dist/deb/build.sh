#!/bin/sh
# Builds the Debian package of fogconnect from what `make build` made
# (run through `make deb`): the binary, the C library (libfogconnect.so.0)
# with its header and pkg-config file (installed into STAGE by `make
# install` beforehand), the systemd units, the example configs as
# conffiles, the SDK's WIT files, shell completions and the README.
#
#   build.sh SOURCE_DIR TARGET_DIR STAGE VERSION OUTPUT.deb
set -eu

source_dir=$1
target_dir=$2
stage=$3
version=$4
output=$5

arch=$(dpkg --print-architecture)
binary="$target_dir/release/fogconnect"
[ -x "$binary" ] || { echo "build.sh: no $binary: run make build first" >&2; exit 1; }

install -D -m 755 "$binary" "$stage/usr/bin/fogconnect"
# The library as `make install` put it: libfogconnect.so.VERSION, linked
# from its SONAME and from libfogconnect.so.
library="$stage/usr/lib/libfogconnect.so.$version"
soname=$(objdump -p "$library" | sed -n 's/^ *SONAME *//p')
[ "$(readlink "$stage/usr/lib/$soname")" = "libfogconnect.so.$version" ] ||
	{ echo "build.sh: $stage/usr/lib/$soname does not link to $library" >&2; exit 1; }
strip --strip-unneeded "$stage/usr/bin/fogconnect" "$library"

for unit in "$source_dir"/dist/systemd/*.service; do
	install -D -m 644 "$unit" "$stage/lib/systemd/system/$(basename "$unit")"
done
for config in "$source_dir"/dist/config/*.toml; do
	install -D -m 644 "$config" "$stage/etc/fogconnect/$(basename "$config")"
done
# node.toml's plugin-dir: the node watches it from its first start.
install -d -m 755 "$stage/etc/fogconnect/plugins"

# The WIT contracts plugin authors build against (a package's deps/ links
# to the packages it imports: copied as files).
(cd "$source_dir/wit" && find -L . -type f -name '*.wit') | while read -r wit; do
	install -D -m 644 "$source_dir/wit/$wit" "$stage/usr/share/fogconnect/wit/$wit"
done

"$stage/usr/bin/fogconnect" completions bash > "$stage/usr/share/fogconnect/completions.bash"
install -D -m 644 "$stage/usr/share/fogconnect/completions.bash" "$stage/usr/share/bash-completion/completions/fogconnect"
rm "$stage/usr/share/fogconnect/completions.bash"
install -d "$stage/usr/share/zsh/vendor-completions" "$stage/usr/share/fish/vendor_completions.d"
"$stage/usr/bin/fogconnect" completions zsh > "$stage/usr/share/zsh/vendor-completions/_fogconnect"
"$stage/usr/bin/fogconnect" completions fish > "$stage/usr/share/fish/vendor_completions.d/fogconnect.fish"

install -D -m 644 "$source_dir/README.md" "$stage/usr/share/doc/fogconnect/README.md"
install -D -m 644 "$source_dir/dist/deb/copyright" "$stage/usr/share/doc/fogconnect/copyright"

# The packages the binary and the library need, with their versions.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/debian"
printf 'Source: fogconnect\n\nPackage: fogconnect\nArchitecture: any\n' > "$work/debian/control"
depends=$(cd "$work" && dpkg-shlibdeps -O "$stage/usr/bin/fogconnect" "$library" 2>/dev/null |
	sed -n 's/^shlibs:Depends=//p')
[ -n "$depends" ] || { echo "build.sh: dpkg-shlibdeps found no dependencies" >&2; exit 1; }

install -d -m 755 "$stage/DEBIAN"
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@DEPENDS@/$depends/" -e "s/@SIZE@/$size/" \
	"$source_dir/dist/deb/control.in" > "$stage/DEBIAN/control"
(cd "$stage" && find etc -type f | sed 's|^|/|' | sort) > "$stage/DEBIAN/conffiles"
for script in postinst prerm postrm; do
	install -m 755 "$source_dir/dist/deb/$script" "$stage/DEBIAN/$script"
done
# The library's entry for the packages built against it (their
# dpkg-shlibdeps reads it: "libfogconnect 0" needs fogconnect >= this
# version), and the ld.so cache refreshed after an install or removal.
printf '%s %s fogconnect (>= %s)\n' "${soname%.so.*}" "${soname##*.so.}" "$version" > "$stage/DEBIAN/shlibs"
printf 'activate-noawait ldconfig\n' > "$stage/DEBIAN/triggers"

mkdir -p "$(dirname "$output")"
# zstd: a second where xz takes a minute on two cores (dpkg reads it
# since Debian 12).
dpkg-deb --root-owner-group -Zzstd --build "$stage" "$output" >/dev/null
echo "built $output"
