"""The contraction spellings the official VQA evaluation (GT-Vision-Lab/VQA ``vqaEval.py``) rewrites.

A table of English data, one line per target form followed by the spellings rewritten to it. Only lowercase
spellings are listed: the official evaluation lowercases before looking a word up, so its capitalised entries
(``Im``, ``Ive``, ``Id've``) and its identity entries (``let's``, ``she's``) never change an answer. The odd entry
``somebody'd -> somebodyd`` is kept because the official evaluation applies it.
"""

_TABLE = """
'ow's'at 'ow'sat 'ows'at ow's'at
'twas twas
ain't aint
aren't arent
can't cant
could've couldve
couldn't couldnt
couldn't've couldn'tve couldnt've
didn't didnt
doesn't doesnt
don't dont
hadn't hadnt
hadn't've hadn'tve hadnt've
hasn't hasnt
haven't havent
he'd hed
he'd've he'dve hed've
he's hes
how'd howd
how'll howll
how's hows
isn't isnt
it'd itd
it'd've it'dve itd've
it'll itll
ma'am maam
might've mightve
mightn't mightnt
mightn't've mightn'tve mightnt've
must've mustve
mustn't mustnt
needn't neednt
not've notve
o'clock oclock
oughtn't oughtnt
shan't shant
she'd've she'dve shed've
should've shouldve
shouldn't shouldnt
shouldn't've shouldn'tve shouldnt've
somebody'd've somebody'dve somebodyd've
somebody'll somebodyll
somebody's somebodys
somebodyd somebody'd
someone'd someoned
someone'd've someone'dve someoned've
someone'll someonell
someone's someones
something'd somethingd
something'd've something'dve somethingd've
something'll somethingll
that's thats
there'd thered
there'd've there'dve thered've
there're therere
there's theres
they'd theyd
they'd've they'dve theyd've
they'll theyll
they're theyre
they've theyve
wasn't wasnt
we'd've we'dve wed've
we've weve
weren't werent
what'll whatll
what're whatre
what's whats
what've whatve
when's whens
where'd whered
where's wheres
where've whereve
who'd whod
who'd've who'dve whod've
who'll wholl
who's whos
who've whove
why'll whyll
why're whyre
why's whys
won't wont
would've wouldve
wouldn't wouldnt
wouldn't've wouldn'tve wouldnt've
y'all yall
y'all'd've y'all'dve y'alld've yall'd've
y'all'll y'allll yall'll
you'd youd
you'd've you'dve youd've
you'll youll
you're youre
you've youve
"""

CONTRACTIONS: dict[str, str] = {spelling: target for line in _TABLE.strip().splitlines()
                                for target, *spellings in [line.split()] for spelling in spellings}
